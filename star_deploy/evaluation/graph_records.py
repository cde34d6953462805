"""Every graph's inputs and outputs along one teacher-forced generation, in Polygraphy's data formats.

One machine records: each graph of an artefact folder runs on ONNX Runtime (CPU) with explicit inputs, scale by
scale, the tokens between scales being the CFG-guided argmax of the recorded logits. The calls are written one
file per graph, as Polygraphy writes them: ``<stem>.<graph>.json`` holds a ``RunResults`` (one iteration per
call, runner ``onnxruntime``; ``--save-outputs``) or a list of feed dicts (``--save-inputs``), the files
``polygraphy run <graph>.onnx --load-inputs ... --load-outputs ...`` reads. Another machine replays the recorded
inputs through its engines and compares with Polygraphy's comparator (``compare_records``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts.manifest import Manifest
from ..core.config import SamplingConfig
from ..core.dtypes import numpy_type
from ..core.graphs import OPTIONAL_GRAPHS, Role, TensorSpec
from ..core.sampling import guidance_scale
from ..core.tables import build_scale_tables
from ..core.tokenizer import PromptTokenizer
from ..errors import ArtifactError, ConfigError
from ..files.atomic import atomic_file, check_writable

log = logging.getLogger(__name__)

REFERENCE_RUNNER = "onnxruntime"
Feeds = dict[str, np.ndarray]


@dataclass
class GraphCall:
    """One execution of a graph: its scale (None for graphs run once), inputs and outputs by graph I/O name."""

    graph: str
    scale: int | None
    inputs: Feeds
    outputs: Feeds


@dataclass
class Recording:
    """The calls of one generation, in execution order."""

    calls: list[GraphCall] = field(default_factory=list)

    def of(self, graph: str) -> list[GraphCall]:
        return [c for c in self.calls if c.graph == graph]

    @property
    def graphs(self) -> list[str]:
        return list(dict.fromkeys(c.graph for c in self.calls))


def record_path(stem: Path, graph: str) -> Path:
    """``ref.json`` -> ``ref.<graph>.json``: Polygraphy's files hold one model's data each."""
    return stem.with_name(f"{stem.stem}.{graph}{stem.suffix or '.json'}")


class OrtGraphs:
    """The folder's graphs as plain ONNX Runtime CPU sessions, run with named feeds."""

    def __init__(self, manifest: Manifest) -> None:
        import onnxruntime as ort

        self.manifest = manifest
        self.sessions = {
            g: ort.InferenceSession(str(manifest.path(g)), providers=["CPUExecutionProvider"])
            for g in manifest.graphs
            if g not in OPTIONAL_GRAPHS
        }

    def __call__(self, graph: str, feeds: Feeds) -> Feeds:
        spec = self.manifest.graphs[graph]
        typed = {n: np.ascontiguousarray(a, dtype=numpy_type(spec.tensor(n).dtype)) for n, a in feeds.items()}
        return dict(zip(spec.output_names, self.sessions[graph].run(spec.output_names, typed)))


def record_generation(manifest: Manifest, prompts: Sequence[str], cfg: float | None = None) -> Recording:
    """Run one generation of ``prompts`` through the folder's graphs on ONNX Runtime, recording every call."""
    run, recording = OrtGraphs(manifest), Recording()

    def call(graph: str, scale: int | None, feeds: Feeds) -> Feeds:
        outputs = run(graph, feeds)
        recording.calls.append(GraphCall(graph, scale, feeds, outputs))
        return outputs

    config, graphs = manifest.config, manifest.graphs
    cfg = SamplingConfig().cfg if cfg is None else cfg
    b = len(prompts)
    toks = PromptTokenizer(manifest.tokenizer_dir)(list(prompts))  # conditional rows, then unconditional
    text = call("text_encoder", None, {"input_ids": toks.input_ids, "attention_mask": toks.attention_mask})
    context = call(
        "text_context",
        None,
        {
            "text_hidden": text["text_hidden"][:b],
            "attention_mask": toks.attention_mask[:b],
            "text_pooled": text["text_pooled"],
        },
    )
    step = graphs["transformer_step"]
    shared = {t.name: context[t.name] for t in step.with_role(Role.TEXT_CONTEXT)}
    slots = {(t.layer, t.is_value): t for t in step.with_role(Role.CACHE_SLOT)}
    past = {t.name: empty_prefix(t, 2 * b) for t in step.with_role(Role.CACHE_PREFIX)}
    x = context["start_tokens"]
    f_hat = np.zeros(graphs["scale_update"].tensor("f_hat").concrete({"batch": b}), dtype=np.float32)
    for k, tables in enumerate(t.arrays() for t in build_scale_tables(config)):
        rope = {"rope_cos": tables["rope_cos"], "rope_sin": tables["rope_sin"]}
        out = call("transformer_step", k, {"x": x, **rope, **shared, **past})
        for t in step.with_role(Role.CACHE_PREFIX):
            past[t.name] = np.concatenate([past[t.name], out[slots[t.layer, t.is_value].name]], axis=0)
        tokens = guided_argmax(out["logits"], guidance_scale(cfg, k, config.num_scales))
        side = config.patch_nums[k]
        update = {name: tables[name] for name in ("upsample", "downsample", "phi_weights", "next_level")}
        out = call("scale_update", k, {"tokens": tokens.reshape(b, side, side), "f_hat": f_hat, **update})
        f_hat, x = out["f_hat_out"], out["next_x"]
    call("vq_decoder", None, {"f_hat": f_hat})
    return recording


def empty_prefix(spec: TensorSpec, rows: int) -> np.ndarray:
    """A cache prefix of length 0 (the first scale's), its other axes from the spec."""
    shape = spec.concrete({"past": 0, "rows": rows, "batch": rows // 2})
    return np.zeros(shape, dtype=numpy_type(spec.dtype))


def guided_argmax(logits: np.ndarray, t: float) -> np.ndarray:
    """(B, l) tokens: the argmax of CFG-guided logits (conditional rows first, then unconditional)."""
    rows = logits.shape[0] // 2
    cond, uncond = logits[:rows].astype(np.float32), logits[rows:].astype(np.float32)
    return ((1 + t) * cond - t * uncond).argmax(-1).astype(np.int64)


def inputs_stem(outputs: Path) -> Path:
    """Where the inputs go when only the outputs are named: ``ref.json`` -> ``ref.inputs.json``."""
    return outputs.with_name(f"{outputs.stem}.inputs{outputs.suffix or '.json'}")


def save_records(recording: Recording, outputs: Path, inputs: Path, overwrite: bool = False) -> list[Path]:
    """Write each graph's outputs as a Polygraphy RunResults and its inputs as a Polygraphy input list, atomically;
    no existing file is replaced without ``overwrite``."""
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import save_json

    targets = [record_path(stem, g) for g in recording.graphs for stem in (outputs, inputs)]
    for target in targets:
        check_writable(target, overwrite)
    for graph in recording.graphs:
        calls = recording.of(graph)
        results = RunResults()
        results.append((REFERENCE_RUNNER, [IterationResult(c.outputs, runner_name=REFERENCE_RUNNER) for c in calls]))
        with atomic_file(record_path(outputs, graph), overwrite) as tmp:
            results.save(str(tmp))
        with atomic_file(record_path(inputs, graph), overwrite) as tmp:
            save_json([c.inputs for c in calls], str(tmp), description="input data")
    return targets


def load_records(stem: Path, inputs: Path, manifest: Manifest) -> Recording:
    """The calls saved by ``save_records`` under the stems ``stem`` (outputs) and ``inputs``."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    recording = Recording()
    for graph, spec in manifest.graphs.items():
        if graph in OPTIONAL_GRAPHS:
            continue  # an exact generation does not run the fast modes' pruned step
        out_path, in_path = record_path(stem, graph), record_path(inputs, graph)
        for path in (out_path, in_path):
            if not path.is_file():
                raise ArtifactError(f"{path}: missing; record it with `star-deploy parity ARTIFACTS --save-outputs`")
        [(_, iterations)] = RunResults.load(str(out_path)).items()
        feeds = load_json(str(in_path), description="input data")
        if len(feeds) != len(iterations):
            raise ArtifactError(f"{in_path}: {len(feeds)} calls, {out_path} has {len(iterations)}; record both again")
        for index, (fed, result) in enumerate(zip(feeds, iterations)):
            outputs = {name: np.asarray(result[name]) for name in result.keys()}
            recording.calls.append(GraphCall(graph, index if spec.per_scale else None, dict(fed), outputs))
    return recording


@dataclass(frozen=True)
class Mismatch:
    """The first output outside the tolerance: graph, scale (None: graph run once), output, largest |error|."""

    graph: str
    scale: int | None
    output: str
    max_abs: float

    def __str__(self) -> str:
        where = f"{self.graph}" if self.scale is None else f"{self.graph} at scale {self.scale}"
        return f"{where}: output {self.output} differs by up to {self.max_abs:.4g}"


def engine_replay(backend) -> Callable[[GraphCall], Feeds]:
    """Replay a call on a TrtBackend's engines (outputs shaped like the recorded ones)."""
    return lambda call: backend.run_graph(
        call.graph, call.scale, call.inputs, {n: a.shape for n, a in call.outputs.items()}
    )


def compare_records(
    reference: Recording, replay: Callable[[GraphCall], Feeds], atol: float, runner: str
) -> tuple[int, Mismatch | None]:
    """Replay every recorded call and compare its outputs with Polygraphy's comparator (|error| <= ``atol``).

    Returns the number of outputs compared and the first one outside, in execution order."""
    from polygraphy.comparator import Comparator, IterationResult, RunResults, SimpleCompareFunc

    from ..engines.polygraphy_calls import quiet_polygraphy

    quiet_polygraphy()
    compared = 0
    for call in reference.calls:
        outputs = replay(call)
        results = RunResults()
        results.append((REFERENCE_RUNNER, [IterationResult(call.outputs, runner_name=REFERENCE_RUNNER)]))
        results.append((runner, [IterationResult(outputs, runner_name=runner)]))
        compare = SimpleCompareFunc(atol=atol, rtol=0.0)
        [accuracy] = Comparator.compare_accuracy(results, compare_func=compare)  # one result per compare function
        [verdicts] = accuracy[(REFERENCE_RUNNER, runner)]
        compared += len(verdicts)
        for name, verdict in verdicts.items():
            if not bool(verdict):
                error = np.abs(np.asarray(call.outputs[name], np.float64) - np.asarray(outputs[name], np.float64))
                return compared, Mismatch(call.graph, call.scale, name, float(error.max()))
    return compared, None


@dataclass(frozen=True)
class RecordsRequest:
    """`parity`'s record-and-compare options: record with ``save_outputs``, compare with ``load_outputs``."""

    save_outputs: Path | None = None
    save_inputs: Path | None = None
    load_outputs: Path | None = None
    load_inputs: Path | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.save_outputs is not None and self.load_outputs is not None:
            raise ConfigError("--save-outputs and --load-outputs: record on one machine, compare on another; give one")
        if self.save_inputs is not None and self.save_outputs is None:
            raise ConfigError("--save-inputs goes with --save-outputs REF")
        if self.load_inputs is not None and self.load_outputs is None:
            raise ConfigError("--load-inputs goes with --load-outputs REF")
