"""The CPU's instruction sets, read at run time: which int8, bf16 and fp32 kernels its matmuls can use."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ISA_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
"""The /proc/cpuinfo flags that decide which reduced-precision kernels ONNX Runtime and PyTorch can use."""


def cpu_flags() -> list[str]:
    """The ISA_FLAGS this CPU reports, in ISA_FLAGS order (empty where /proc/cpuinfo is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in present]
    except OSError:
        pass
    return []


INT8_ISAS = (
    ("amx_int8", "AMX-INT8"),
    ("avx512_vnni", "AVX512-VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512f", "AVX512 (no VNNI)"),
    ("avx2", "AVX2 (no VNNI)"),
)
BF16_ISAS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))


def int8_isa(flags: list[str]) -> str:
    """The instructions ONNX Runtime's MLAS runs int8 matmuls with on this CPU (the best it finds)."""
    return next((name for flag, name in INT8_ISAS if flag in flags), "SSE")


def bf16_isa(flags: list[str]) -> str | None:
    """The native bf16 matmul instructions, or None where bf16 is emulated (slower than fp32)."""
    return next((name for flag, name in BF16_ISAS if flag in flags), None)


def fp32_isa(flags: list[str]) -> str:
    if "fma" not in flags:
        return "SSE fp32"
    return ("AVX512" if "avx512f" in flags else "AVX2") + " FMA fp32"


def backend_isa(precision: str, compute_dtype: str, flags: list[str]) -> str:
    """The instruction set a CPU backend's matmuls run on: int8 dot products, native or emulated bf16, fp32 FMA.

    ``precision`` is the artefact precision (``fp32``, ``int8``, ``int8-dynamic``, ...; ``fp32`` for torch).
    """
    if precision.startswith("int"):
        return int8_isa(flags)
    if compute_dtype == "bfloat16":
        return bf16_isa(flags) or "bf16 emulated"
    if compute_dtype == "float16":
        return "AVX512-FP16" if "avx512_fp16" in flags else "fp16 emulated"
    return fp32_isa(flags)
