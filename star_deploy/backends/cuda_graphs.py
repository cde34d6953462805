"""CUDA graphs for the torch backend: each scale's kernels captured once, then launched as one."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from .torch_sampling import PortableSampler

GraphFn = Callable[..., tuple[torch.Tensor, ...]]


@dataclass
class Captured:
    """One captured graph with the static buffers it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]


class CudaGraphs:
    """Captures ``fn(*inputs)`` per key on first use and replays it afterwards.

    Inputs are copied into static buffers owned here. Any other tensor ``fn`` reads (weights,
    the KV cache, the text context) must keep its storage between calls; call ``reset`` when
    it is reallocated. Graphs share one memory pool, so they must be replayed in the order
    they were captured (the scale loop's order); the pool is the first graph's, and a
    ``reset`` starts a new one. Returned tensors are the graph's static outputs: valid until
    the same key is replayed again.
    """

    def __init__(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self.device = device
        self.captured: dict[Hashable, Captured] = {}
        self.pool: tuple[int, int] | None = None

    def reset(self) -> None:
        self.captured.clear()
        self.pool = None

    def run(self, key: Hashable, fn: GraphFn, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        entry = self.captured.get(key)
        if entry is None:
            entry = self.captured[key] = self._capture(fn, inputs)
        for static, value in zip(entry.inputs, inputs):
            static.copy_(value)
        entry.graph.replay()
        return entry.outputs

    def _capture(self, fn: GraphFn, inputs: tuple[torch.Tensor, ...]) -> Captured:
        """Warm ``fn`` up on a side stream (lazy initialisation stays out of the graph), then capture it."""
        static = tuple(t.clone() for t in inputs)
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            fn(*static)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = fn(*static)
        if self.pool is None:
            self.pool = graph.pool()
        return Captured(graph, static, tuple(outputs))


class GraphedSampler:
    """The portable sampler's draw replayed as one CUDA graph per (scale, top-k, top-p).

    The seeds' hash keys and the CFG strength are graph inputs, so one capture serves every
    later generation whatever its seeds and CFG. The tokens are copied out of the graph's
    static output, which the next replay of the same key overwrites.
    """

    def __init__(self, sampler: PortableSampler, graphs: CudaGraphs) -> None:
        self.sampler, self.graphs = sampler, graphs

    def __call__(self, logits: torch.Tensor, scale: int) -> torch.Tensor:
        s = self.sampler
        key = ("sample", scale, s.sampling.top_k, s.sampling.top_p)
        (tokens,) = self.graphs.run(key, self._draw, logits, s.guidance[scale], s.keys[scale])
        return tokens.clone()

    def _draw(self, logits: torch.Tensor, guidance: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.sampler.draw(logits, guidance, keys),)
