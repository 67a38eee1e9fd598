"""Device selection, in one place: CUDA when present, else CPU; an explicit name overrides."""
from __future__ import annotations

from cedm.errors import CedmError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # training precision / engine dtype names; auto = the device's best


def resolve_device(name: str | None = None):
    """Return a torch.device for ``name`` ('auto'/None, 'cpu', 'cuda', 'cuda:1', 'mps')."""
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise CedmError(f"unknown device {name!r}: use auto, cpu or cuda[:N]") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CedmError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CedmError(f"device {name!r} requested but MPS is not available here; use --device cpu")
    return dev


def cpu_has_native_bf16() -> bool:
    """True on CPUs that compute bf16 in hardware (AMX tiles or AVX512-BF16) unless CEDM_CPU_BF16=0. There
    bf16 autocast is 1.5-2.5x faster than float32 (bench/features.py, bench/sampling.py); elsewhere bf16 is
    emulated and slower than float32, so callers keep float32."""
    import os

    import torch

    if os.environ.get("CEDM_CPU_BF16", "1") == "0":
        return False
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
