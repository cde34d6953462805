"""Train the built-in demo STAR on synthetic shapes; save it in the release layout (weights as safetensors).

    python -m tools.demo_training.train --out DIR [--quick] [--seed N] [--threads N]

Stage 1 trains the multi-scale VQVAE. Stage 2 first teaches a small CLIP text encoder to
read a caption's attributes, then trains the transformer and the text encoder together on
teacher-forced token sequences. Everything is seeded; on CPU with a fixed thread count a run
is reproducible. The shipped weights (``star_deploy/demo/weights``, its training.json holds
the record) come from four runs, about 45 + 35 + 25 + 15 minutes on 2 cores:

    python -m tools.demo_training.train --vae-only --out stage1 --threads 1
    python -m tools.demo_training.train --vae-from stage1/vae.safetensors --out stage2 --threads 2
    python -m tools.demo_training.train --resume stage2 --seed 1 --ar-steps 1200 --ar-lr 5e-4 \
        --uniform-loss --threads 2 --out stage3
    python -m tools.demo_training.train --resume stage3 --seed 2 --ar-steps 1000 --ar-lr 3e-4 \
        --uniform-loss --threads 2 --out star_deploy/demo/weights

(Those runs wrote official-format vae.pth and star.pth; the shipped files are the same tensors,
converted losslessly to safetensors.)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from star_deploy.core.config import SCHEDULES, SamplingConfig, TextEncoderConfig, TransformerConfig, VaeConfig
from star_deploy.demo import DEMO_WEIGHTS
from star_deploy.model.text import random_text_encoder
from star_deploy.model.transformer import StarTransformer
from star_deploy.release.weights import infer_vae_config, read_state_file

from .ar import TeacherForcing
from .data import (
    COLOURS,
    HELD_OUT,
    POSITIONS,
    SHAPES,
    SIZES,
    TRAIN_COMBOS,
    caption,
    make_scenes,
    render_batch,
    sample_scene,
)
from .vq import QuantTables, TrainableVQVAE, quant_tables, quantize, restart_dead_codes

log = logging.getLogger("tools.demo_training.train")

RESOLUTION = 128
VAE_FILE = "vae.safetensors"
STAR_FILE = "star.safetensors"


@dataclass(frozen=True)
class TrainSpec:
    """Every size and hyperparameter of one demo training run."""

    seed: int = 0
    vocab: int = 256
    cvae: int = 8
    vae_ch: int = 32
    vae_steps: int = 2000
    vae_batch: int = 6
    vae_lr: float = 1e-3
    restart_every: int = 25
    scenes: int = 16000
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_steps: int = 500
    text_batch: int = 128
    text_lr: float = 3e-3
    width: int = 192
    depth: int = 4
    heads: int = 3
    ar_steps: int = 2000
    ar_batch: int = 32
    ar_lr: float = 1e-3
    drop_caption: float = 0.1
    drop_pooled: float = 0.1
    warmup: int = 50
    eval_seeds: int = 2
    balanced_loss: bool = True


FULL = TrainSpec()
QUICK = replace(
    FULL,
    vae_steps=2,
    vae_batch=2,
    restart_every=1,
    scenes=8,
    text_width=32,
    text_layers=1,
    text_steps=2,
    width=64,
    depth=1,
    heads=1,
    ar_steps=2,
    ar_batch=4,
    warmup=1,
    eval_seeds=0,
)


def vae_config(spec: TrainSpec) -> VaeConfig:
    return VaeConfig(vocab_size=spec.vocab, cvae=spec.cvae, ch=spec.vae_ch)


def transformer_config(spec: TrainSpec) -> TransformerConfig:
    return TransformerConfig(
        depth=spec.depth,
        width=spec.width,
        heads=spec.heads,
        text_width=spec.text_width,
        vocab_size=spec.vocab,
        cvae=spec.cvae,
        num_scales=len(SCHEDULES[RESOLUTION]),
    )


def text_config(spec: TrainSpec) -> TextEncoderConfig:
    return TextEncoderConfig(
        width=spec.text_width, layers=spec.text_layers, heads=spec.text_heads, intermediate=4 * spec.text_width
    )


def saturating_loss(rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + MSE that ignores overshoot past a target at -1 or 1 (inference clamps there anyway)."""
    err = rec - target
    err = torch.where(target >= 1, err.clamp(max=0), torch.where(target <= -1, err.clamp(min=0), err))
    return err.abs().mean() + err.square().mean()


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


class Progress:
    """Logs step, running losses, speed and time left every ``every`` steps."""

    def __init__(self, name: str, total: int, every: int) -> None:
        self.name, self.total, self.every = name, total, every
        self.start = time.perf_counter()
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, step: int, **losses: float) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        if (step + 1) % self.every and step + 1 != self.total:
            return
        elapsed = time.perf_counter() - self.start
        left = elapsed / (step + 1) * (self.total - step - 1)
        text = " ".join(f"{k} {v / self.count:.4f}" for k, v in self.sums.items())
        log.info(
            "%s %d/%d %s | %.2f s/step, %.0f s left", self.name, step + 1, self.total, text, elapsed / (step + 1), left
        )
        self.sums, self.count = {}, 0


def images_of(scenes: list, device: str = "cpu") -> torch.Tensor:
    return torch.from_numpy(render_batch(scenes)).to(device)


def train_vae(spec: TrainSpec, tables: QuantTables) -> tuple[TrainableVQVAE, dict[str, float]]:
    """Stage 1: encoder, residual quantizer, Phi convs and decoder, on freshly rendered scenes.

    Always whole images: the decoder's GroupNorm statistics must be those of a whole image.
    """
    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    vae = TrainableVQVAE(vae_config(spec))
    opt = torch.optim.AdamW(vae.parameters(), lr=spec.vae_lr, betas=(0.9, 0.95), weight_decay=0.0)
    usage = torch.zeros(spec.vocab)
    progress = Progress("vae", spec.vae_steps, max(1, spec.vae_steps // 40))
    last: dict[str, float] = {}
    for step in range(spec.vae_steps):
        set_lr(opt, learning_rate(step, spec.vae_steps, spec.vae_lr, spec.warmup))
        images = images_of([sample_scene(rng, TRAIN_COMBOS) for _ in range(spec.vae_batch)])
        q = quantize(vae, vae.features(images), tables)
        rec_loss = saturating_loss(vae.reconstruct(q.f_hat), images * 2 - 1)
        opt.zero_grad(set_to_none=True)
        (rec_loss + q.loss).backward()
        nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        usage += torch.bincount(torch.cat([t.flatten() for t in q.tokens]), minlength=spec.vocab).float()
        if (step + 1) % spec.restart_every == 0 and step < 0.8 * spec.vae_steps:
            restart_dead_codes(vae, usage, q.residuals, gen)
            usage.zero_()
        last = {"rec": rec_loss.item(), "vq": q.loss.item()}
        progress.update(step, **last)
    return vae.eval(), last


@torch.no_grad()
def encode_scenes(
    vae: TrainableVQVAE, scenes: list, tables: QuantTables, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences (N, L) and teacher next-scale maps (N, L - 1, Cvae) of ``scenes``."""
    tokens, maps = [], []
    for i in range(0, len(scenes), batch):
        q = quantize(vae, vae.features(images_of(scenes[i : i + batch])), tables)
        tokens.append(torch.cat(q.tokens, dim=1))
        maps.append(q.next_maps)
    return torch.cat(tokens), torch.cat(maps)


def scale_weights(sides: tuple[int, ...]) -> torch.Tensor:
    """Per-token loss weights (L,) that give every scale the same total weight.

    The coarse scales decide colours and layout from the text; unweighted, the last two
    scales would hold three quarters of the loss.
    """
    return torch.cat([torch.full((p * p,), 1.0 / (p * p * len(sides))) for p in sides])


def init_transformer(model: StarTransformer) -> None:
    """Small normal init; residual output projections scaled down by depth."""
    depth = model.config.depth
    for name, p in model.named_parameters():
        if name.endswith("bias") or "scale_mul" in name:
            continue
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * depth) if name.endswith(("proj.weight", "fc2.weight")) else 0.02
            nn.init.normal_(p, std=std)
    nn.init.zeros_(model.pos_start)


class TextBatcher:
    """Tokenizes captions (padded to the longest) and runs the text encoder on them."""

    def __init__(self, tokenizer_dir: Path, clip: nn.Module) -> None:
        from transformers import CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
        self.clip = clip

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(captions, padding="longest", max_length=77, truncation=True, return_tensors="pt")
        out = self.clip(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        return out.last_hidden_state, enc.attention_mask, out.pooler_output


ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "background": tuple(COLOURS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
}
"""What the text encoder learns to read from a caption before the transformer trains on it."""


class AttributeHeads(nn.Module):
    """One linear classifier per scene attribute on the pooled text vector (thrown away after)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(width, len(values)) for name, values in ATTRIBUTES.items()})

    def loss(self, pooled: torch.Tensor, scenes: list) -> torch.Tensor:
        total = pooled.new_zeros(())
        for name, values in ATTRIBUTES.items():
            target = torch.tensor([values.index(getattr(s, name)) for s in scenes])
            total = total + F.cross_entropy(self.heads[name](pooled), target)
        return total / len(ATTRIBUTES)


def pretrain_text(spec: TrainSpec, text: TextBatcher) -> dict[str, float]:
    """Stage 2a: teach the text encoder to read colour, shape, background, size and position.

    A cheap supervised warm start: the transformer then trains against text features that
    already separate what a caption says, instead of discovering language from its own loss.
    """
    rng = np.random.default_rng(spec.seed + 4)
    heads = AttributeHeads(spec.text_width)
    params = list(text.clip.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=spec.text_lr, betas=(0.9, 0.95), weight_decay=0.01)
    progress = Progress("text", spec.text_steps, max(1, spec.text_steps // 10))
    last: dict[str, float] = {}
    for step in range(spec.text_steps):
        set_lr(opt, learning_rate(step, spec.text_steps, spec.text_lr, spec.warmup))
        scenes = [sample_scene(rng, TRAIN_COMBOS) for _ in range(spec.text_batch)]
        _, _, pooled = text([caption(s, rng) for s in scenes])
        loss = heads.loss(pooled, scenes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = {"attr": loss.item()}
        progress.update(step, **last)
    return last


def conditioning(
    spec: TrainSpec, scenes: list, rng: np.random.Generator, text: TextBatcher
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Text of a batch with caption dropout; some rows keep the caption but get the empty prompt's pooled vector.

    The second kind is exactly the unconditional row of inference, where the empty prompt
    enters through the start token while cross-attention reads the prompt.
    """
    draws = rng.random(len(scenes))
    captions = ["" if d < spec.drop_caption else caption(s, rng) for s, d in zip(scenes, draws)]
    hidden, mask, pooled = text(captions + [""])
    pooled_drop = torch.from_numpy((draws >= spec.drop_caption) & (draws < spec.drop_caption + spec.drop_pooled))
    pooled = torch.where(pooled_drop[:, None], pooled[-1:], pooled[:-1])
    return hidden[:-1], mask[:-1], pooled


def new_text_and_transformer(spec: TrainSpec) -> tuple[StarTransformer, nn.Module]:
    transformer = StarTransformer(transformer_config(spec))
    init_transformer(transformer)
    return transformer, random_text_encoder(text_config(spec), seed=spec.seed + 2)


def train_star(
    spec: TrainSpec,
    scenes: list,
    tokens: torch.Tensor,
    maps: torch.Tensor,
    tokenizer_dir: Path,
    start: tuple[StarTransformer, nn.Module] | None = None,
) -> tuple[StarTransformer, nn.Module, dict[str, float]]:
    """Stage 2: transformer and text encoder, teacher-forced over whole token sequences.

    ``start`` continues from a trained transformer and text encoder (no text warm start).
    """
    torch.manual_seed(spec.seed + 1)
    rng = np.random.default_rng(spec.seed + 1)
    transformer, clip = start if start is not None else new_text_and_transformer(spec)
    clip.train()
    text = TextBatcher(tokenizer_dir, clip)
    text_losses = pretrain_text(spec, text) if start is None else {}
    forcing = TeacherForcing(transformer, SCHEDULES[RESOLUTION]).train()
    sides = SCHEDULES[RESOLUTION]
    weights = (
        scale_weights(sides)
        if spec.balanced_loss
        else torch.full((sum(p * p for p in sides),), 1.0 / sum(p * p for p in sides))
    )
    params = list(transformer.parameters()) + list(clip.parameters())
    opt = torch.optim.AdamW(params, lr=spec.ar_lr, betas=(0.9, 0.95), weight_decay=0.01)
    progress = Progress("star", spec.ar_steps, max(1, spec.ar_steps // 50))
    last: dict[str, float] = {}
    for step in range(spec.ar_steps):
        set_lr(opt, learning_rate(step, spec.ar_steps, spec.ar_lr, spec.warmup))
        idx = torch.from_numpy(rng.integers(len(scenes), size=spec.ar_batch))
        hidden, mask, pooled = conditioning(spec, [scenes[i] for i in idx.tolist()], rng, text)
        logits = forcing(hidden, mask, pooled, maps[idx])
        ce = F.cross_entropy(logits.reshape(-1, spec.vocab), tokens[idx].reshape(-1), reduction="none")
        loss = (ce.view(len(idx), -1) * weights).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        last = {"ce": loss.item()}
        progress.update(step, **last)
    return transformer.eval(), clip.eval(), {**text_losses, **last}


def half_state(module: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(dtype).clone().contiguous() for k, v in module.state_dict().items()}


def save_state(module: nn.Module, dtype: torch.dtype, path: Path) -> None:
    """A flat state dict as safetensors (what ``star_deploy.release.weights`` reads beside the official .pth)."""
    from safetensors.torch import save_file

    save_file(half_state(module, dtype), str(path))


def save_release(
    out: Path,
    vae: TrainableVQVAE,
    transformer: StarTransformer,
    clip: nn.Module,
    tokenizer_dir: Path,
    dtype: torch.dtype,
) -> None:
    """The release layout: CLIP/tokenizer, CLIP/text_encoder, vae.safetensors, star.safetensors."""
    out.mkdir(parents=True, exist_ok=True)
    tok_out = out / "CLIP" / "tokenizer"
    if tok_out.resolve() != tokenizer_dir.resolve():
        shutil.copytree(tokenizer_dir, tok_out, dirs_exist_ok=True)
    clip.to(dtype).save_pretrained(str(out / "CLIP" / "text_encoder"))
    clip.float()
    save_state(vae, dtype, out / VAE_FILE)
    save_state(transformer, dtype, out / STAR_FILE)


def held_out_prompts(seeds: int) -> list[tuple[str, tuple[str, str, str], int]]:
    """(prompt, combination, seed) for every held-out combination and seed."""
    return [(f"a {c} {s} on a {b} background", (c, s, b), seed) for seed in range(seeds) for c, s, b in HELD_OUT]


def evaluate_release(out: Path, seeds: int) -> dict[str, float]:
    """Pass rates of colours and shapes on held-out combinations, generated with the torch backend."""
    from star_deploy.backends.torch_backend import TorchBackend
    from star_deploy.core.tokenizer import PromptTokenizer
    from star_deploy.release.finder import resolve_release
    from star_deploy.release.weights import load_release
    from star_deploy.runtime.pipeline import ScaleLoop

    from .evaluate import read_image

    model = load_release(resolve_release(weights=out), RESOLUTION)
    pipe = ScaleLoop(TorchBackend(model), PromptTokenizer(model.tokenizer_dir))
    cases = held_out_prompts(seeds)
    gen = pipe.generate([p for p, _, _ in cases], SamplingConfig(), seeds=[s for _, _, s in cases])
    hits = np.array([read_image(img.numpy()).matches(combo) for img, (_, combo, _) in zip(gen.images, cases)])
    return {"colours": float(hits[:, 0].mean()), "shape": float(hits[:, 1].mean()), "images": len(cases)}


def rounded(vae: TrainableVQVAE, dtype: torch.dtype) -> TrainableVQVAE:
    """The VQVAE with its weights rounded to the saved dtype, so stage 2 sees the shipped codebook."""
    vae.load_state_dict({k: v.float() for k, v in half_state(vae, dtype).items()})
    return vae


def load_vae(path: Path) -> TrainableVQVAE:
    """A VQVAE saved by an earlier run (its vae.safetensors or vae.pth, encoder included)."""
    sd = read_state_file(path)
    vae = TrainableVQVAE(infer_vae_config(sd, path))
    vae.load_state_dict({k: v.float() for k, v in sd.items()})
    return vae.eval()


def run_vae_only(spec: TrainSpec, out: Path, dtype: torch.dtype) -> dict:
    """Stage 1 alone: write out/vae.safetensors (encoder included) for a later ``--vae-from``."""
    t0 = time.perf_counter()
    vae, losses = train_vae(spec, quant_tables(SCHEDULES[RESOLUTION]))
    out.mkdir(parents=True, exist_ok=True)
    save_state(vae, dtype, out / VAE_FILE)
    record = {
        "spec": asdict(spec),
        "seconds": {"vae": round(time.perf_counter() - t0)},
        "final_losses": {"vae": losses},
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def run(
    spec: TrainSpec,
    out: Path,
    tokenizer_dir: Path,
    dtype: torch.dtype,
    vae_from: Path | None = None,
    resume: Path | None = None,
) -> dict:
    """Both stages (or stage 2 on a saved VQVAE, or more of stage 2 on a saved release), save, and evaluate."""
    tables = quant_tables(SCHEDULES[RESOLUTION])
    t0 = time.perf_counter()
    start = None
    if resume is not None:
        from star_deploy.release.finder import resolve_release
        from star_deploy.release.weights import load_release

        paths = resolve_release(weights=resume)
        model = load_release(paths, RESOLUTION)
        start = (model.transformer, model.text_encoder)
        vae, vae_losses = load_vae(paths.vae), {"from": str(paths.vae)}
    elif vae_from is None:
        vae, vae_losses = train_vae(spec, tables)
    else:
        vae, vae_losses = load_vae(vae_from), {"from": str(vae_from)}
    vae = rounded(vae, dtype)
    t1 = time.perf_counter()
    scenes = make_scenes(spec.scenes, spec.seed + 3)
    tokens, maps = encode_scenes(vae, scenes, tables)
    log.info("encoded %d scenes in %.0f s", len(scenes), time.perf_counter() - t1)
    t2 = time.perf_counter()
    transformer, clip, ar_losses = train_star(spec, scenes, tokens, maps, tokenizer_dir, start)
    t3 = time.perf_counter()
    save_release(out, vae, transformer, clip, tokenizer_dir, dtype)
    record = {
        "spec": asdict(spec),
        "seconds": {"vae": round(t1 - t0), "encode": round(t2 - t1), "star": round(t3 - t2)},
        "final_losses": {"vae": vae_losses, "star": ar_losses},
        "threads": torch.get_num_threads(),
        "resumed_from": str(resume) if resume else None,
    }
    if spec.eval_seeds and spec.ar_steps:
        record["held_out"] = evaluate_release(out, spec.eval_seeds)
        log.info("held-out pass rates: %s", record["held_out"])
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.demo_training.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder to write the release into")
    p.add_argument("--quick", action="store_true", help="tiny sizes and a few steps (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vae-steps", type=int, help="override the VQVAE step count")
    p.add_argument("--ar-steps", type=int, help="override the transformer step count")
    p.add_argument("--tokenizer", type=Path, default=DEMO_WEIGHTS / "CLIP" / "tokenizer", help="CLIP tokenizer folder")
    p.add_argument("--vae-only", action="store_true", help="run stage 1 only and write OUT/vae.safetensors")
    p.add_argument("--resume", type=Path, help="continue stage 2 from this release folder (its VQVAE included)")
    p.add_argument("--ar-lr", type=float, help="override the transformer learning rate")
    p.add_argument("--uniform-loss", action="store_true", help="weight every token alike instead of every scale alike")
    p.add_argument("--vae-from", type=Path, help="skip stage 1: reuse the VQVAE file of an earlier run")
    p.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="dtype of the saved VQVAE and STAR weights"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    spec = replace(QUICK if args.quick else FULL, seed=args.seed)
    if args.vae_steps is not None:
        spec = replace(spec, vae_steps=args.vae_steps)
    if args.ar_steps is not None:
        spec = replace(spec, ar_steps=args.ar_steps)
    if args.ar_lr is not None:
        spec = replace(spec, ar_lr=args.ar_lr)
    if args.uniform_loss:
        spec = replace(spec, balanced_loss=False)
    dtype = getattr(torch, args.dtype)
    if args.vae_only:
        return run_vae_only(spec, args.out, dtype)
    return run(spec, args.out, args.tokenizer, dtype, args.vae_from, args.resume)


if __name__ == "__main__":
    main()
