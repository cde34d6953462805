"""Export the reference graphs (model/graph_modules.py) to ONNX with the dynamo exporter.

Each graph's I/O comes from ``graphs.graph_specs``: the same declaration names the ONNX
inputs/outputs, picks the dynamic axes and shapes the sample inputs.
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from ..core.config import StarConfig
from ..core.dtypes import torch_dtype
from ..core.graphs import PRUNED_STEP, GraphSpec, activation_dtype, graph_specs, scale_dims
from ..core.tables import build_scale_tables
from ..files.signals import raise_if_interrupted
from ..model.graph_modules import DecoderGraph, PrunedStepGraph, ScaleUpdateGraph, StepGraph, TextContextGraph
from ..model.text import TextEncoderModule
from ..release.weights import StarTorchModel

log = logging.getLogger(__name__)
EXPORTER_REGISTRATION_LOG = "torch.onnx._internal.exporter._registration"
"""Warns once per torchvision operator it cannot register when torchvision is absent (unused here)."""

OPSET = 18
"""Parsed by TensorRT 10.x and 11 and ONNX Runtime >= 1.14."""
EXPORT_BATCH = 2
EXPORT_SCALE = 2
"""Sample shapes avoid sizes 0 and 1, which torch.export would specialize."""
EXTERNAL_DATA_BYTES = 1_500_000_000
"""Weights above this go to ``<graph>.onnx.data`` (protobuf caps a file at 2 GB)."""


def graph_modules(model: StarTorchModel) -> dict[str, nn.Module]:
    return {
        "text_encoder": TextEncoderModule(model.text_encoder),
        "text_context": TextContextGraph(model.transformer),
        "transformer_step": StepGraph(model.transformer),
        PRUNED_STEP: PrunedStepGraph(model.transformer),
        "scale_update": ScaleUpdateGraph(model.transformer, model.vqvae),
        "vq_decoder": DecoderGraph(model.vqvae),
    }


def export_dims() -> dict[str, Dim]:
    """Every symbolic dimension; ``rows`` is free of ``batch``: 2B, or B where guidance stops (fast modes)."""
    return {
        "batch": Dim("batch", min=1, max=256),
        "rows": Dim("rows", min=1, max=512),
        "tokens": Dim("tokens", min=1, max=65536),
        "past": Dim("past", min=0, max=65536),
        "side": Dim("side", min=1, max=256),
        "next_side": Dim("next_side", min=1, max=256),
        "kept": Dim("kept", min=1, max=65536),
        "prior_side": Dim("prior_side", min=1, max=256),
    }


def sample_inputs(config: StarConfig, spec: GraphSpec) -> list[torch.Tensor]:
    """Random inputs of the export shapes, in ``spec``'s order."""
    dims = scale_dims(config, EXPORT_BATCH, EXPORT_SCALE)
    dims["kept"] = dims["tokens"] - 2
    fixed = {k: torch.from_numpy(v) for k, v in build_scale_tables(config)[EXPORT_SCALE].arrays().items()}
    gen = torch.Generator().manual_seed(0)
    out = []
    for t in spec.inputs:
        shape = t.concrete(dims)
        if t.name in fixed:
            out.append(fixed[t.name])
        elif t.name == "kept_index":
            order = torch.rand(dims["rows"], dims["tokens"], generator=gen).argsort(dim=1)
            out.append(order[:, : dims["kept"]].sort(dim=1).values)
        elif t.name == "attention_mask":
            out.append((torch.arange(shape[-1]) < 5).long().expand(shape).contiguous())
        elif t.dtype == "int64":
            high = config.text.vocab_size if t.name == "input_ids" else config.transformer.vocab_size
            out.append(torch.randint(0, high, shape, generator=gen))
        else:
            out.append(torch.randn(shape, generator=gen).to(torch_dtype(t.dtype)))
    return out


def dynamic_shapes(spec: GraphSpec, module: nn.Module) -> dict[str, object]:
    """torch.export dynamic shapes keyed by the module's forward parameters."""
    dims = export_dims()
    per_input = [{i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str)} or None for t in spec.inputs]
    params = list(inspect.signature(module.forward).parameters.values())
    result: dict[str, object] = {}
    for i, p in enumerate(params):
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            result[p.name] = tuple(per_input[i:])
            break
        result[p.name] = per_input[i]
    return result


def export_graph(
    module: nn.Module, spec: GraphSpec, args: list[torch.Tensor], path: Path, external_bytes: int = EXTERNAL_DATA_BYTES
) -> None:
    """Export ``module`` to ``path`` with ``spec``'s names; weights over ``external_bytes`` go to external data."""
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger(EXPORTER_REGISTRATION_LOG).setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            tuple(args),
            dynamo=True,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=dynamic_shapes(spec, module),
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=weight_bytes > external_bytes)


def cast_model(model: StarTorchModel, precision: str) -> StarTorchModel:
    """A copy of ``model`` in the precision's compute dtype (head and text encoder stay fp32)."""
    dtype = torch_dtype(activation_dtype(precision))
    return copy.deepcopy(model).to("cpu", dtype)


def export_all(
    model: StarTorchModel, precision: str, folder: Path, on_graph=None, external_bytes: int = EXTERNAL_DATA_BYTES
) -> dict[str, GraphSpec]:
    """Write every graph of ``model`` into ``folder``; returns the specs written."""
    specs = graph_specs(model.config, precision)
    cast = cast_model(model, precision)
    modules = graph_modules(cast)
    for name, spec in specs.items():
        raise_if_interrupted()
        log.info("exporting %s", spec.file)
        export_graph(modules[name].eval(), spec, sample_inputs(model.config, spec), folder / spec.file, external_bytes)
        if on_graph is not None:
            on_graph(name)
    return specs
