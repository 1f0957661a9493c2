"""The compute device: which one a run gets, which speed switches help on it, its name, and waiting for it.

The one owner of these facts: the trainer, the fused trainer and the benchmark all ask here.

    >>> resolve_device("cpu"), device_name(resolve_device("cpu")).endswith("cores")
    (device(type='cpu'), True)
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from ablate.config import ConfigError

__all__ = ["device_name", "resolve_device", "speed_defaults", "sync"]

# cuBLAS computes deterministically only with a fixed workspace, which PyTorch checks once per process, at its
# first cuBLAS call: without it trainer.deterministic on CUDA raises at the first linear layer. Set on import,
# before any run touches CUDA (a value the user set is kept); 8 buffers of 4 MiB, costless here.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when present, else cpu; anything else as torch understands it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device is {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return device


def speed_defaults(device: torch.device) -> bool:
    """Whether bf16 autocast and channels_last help on ``device`` (the rule behind their ``None`` default).

    CUDA: when the GPU supports bf16. CPU: when it has AVX512-BF16 or AMX units (oneDNN then runs bf16
    convolutions natively); measured in docs/BENCHMARKS.md.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16", "AMX") and _cpu_has_bf16()
    return False


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and core count ("Intel(R) Xeon(R) ..., 2 cores")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or 'CPU'}, {os.cpu_count()} cores"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU, which computes as it goes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
