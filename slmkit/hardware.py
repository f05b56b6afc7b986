"""What this CPU can do, read once from /proc/cpuinfo: used to pick fast paths and recorded with timings."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def native_bf16() -> bool:
    """True when bf16 matrix math runs in hardware (AVX-512 BF16 or AMX); elsewhere bf16 autocast is emulated
    and much slower than fp32 (measured 18x slower for MiniLM training on an AVX2-only CPU)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def int8_speedup_expected() -> bool:
    """int8 matrix math has its own instructions (VNNI or AMX) here; without them ONNX Runtime's int8 kernels
    emulate the dot products with AVX2 and can be slower than fp32."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def fingerprint(threads: int | None = None) -> dict:
    """What a timing was measured on: CPU model, vector/matrix instruction sets, threads and library versions."""
    import os

    info = {
        "cpu": cpu_name(),
        "isa": [f for f in ISA_FLAGS if f in cpu_flags()],
        "int8_instructions": int8_speedup_expected(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info
