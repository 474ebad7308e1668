"""What the CPU can do fast: bfloat16 matrix products need AVX512-BF16 or AMX, else they are emulated (slowly).

Measured (``results/text.md``): on an AMD EPYC Zen 3 (AVX2 only) a SmolLM2 prompt-tuning task took 171 s in bf16
against 12 s in float32; on a Zen 4 with AVX512-BF16 bf16 was 1.2-1.6x faster than float32.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

PRECISIONS = ("fp32", "bf16")
"""Number formats a training step or a text model can run in."""

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of the x86 instructions that run bfloat16 products natively."""


def cpuinfo_value(keys: tuple[str, ...], cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The value of the first line of ``/proc/cpuinfo`` whose key is one of ``keys``; ``None`` where the file has no
    such line or cannot be read (another OS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags (Linux x86 ``/proc/cpuinfo``), or ``None`` where that file does not list them."""
    flags = cpuinfo_value(("flags",), cpuinfo)
    return None if flags is None else set(flags.split())


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """True/False on x86 Linux (from the flags); ``None`` where it cannot tell (another OS or architecture)."""
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return None
    return any(flag in flags for flag in BF16_FLAGS)


@functools.cache
def warn_slow_bf16(device_type: str, setting: str) -> bool:
    """Print, once per process and setting, that bf16 on this CPU will be slow; True if it warned."""
    if device_type != "cpu" or cpu_has_bf16() is not False:
        return False
    print(f"warning: {setting}=bf16 on a CPU without bfloat16 instructions ({' / '.join(BF16_FLAGS)} not in "
          f"/proc/cpuinfo): its products are emulated and can be several times slower than fp32 here "
          f"(torch {torch.__version__})", file=sys.stderr)
    return True


def bf16_autocast(device_type: str, enabled: bool, setting: str) -> torch.autocast:
    """bfloat16 autocast on ``device_type`` when ``enabled`` (warning once where the CPU would emulate it; ``setting``
    names the option that asked for it), else a disabled autocast."""
    if enabled:
        warn_slow_bf16(device_type, setting)
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)


def cpu_generation(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """``"family F, model M"`` from an x86 ``/proc/cpuinfo``, which tells apart CPUs sold under one name (an AMD
    EPYC Zen 4 is family 25, a Zen 5 family 26); ``None`` where the file does not say."""
    family, model = cpuinfo_value(("cpu family",), cpuinfo), cpuinfo_value(("model",), cpuinfo)
    return None if family is None or model is None else f"family {family}, model {model}"


def machine() -> dict[str, Any]:
    """This machine as a run records it: CPU name, generation and cores, torch threads, bfloat16 support, GPUs,
    versions."""
    cpu = cpuinfo_value(("model name", "Model", "Hardware"))
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    return {
        "torch": torch.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu": cpu or platform.processor() or None, "cpu_generation": cpu_generation(),
        "cpu_cores": os.cpu_count(), "cpu_cores_usable": usable,
        "torch_threads": torch.get_num_threads(), "cpu_bf16": cpu_has_bf16(), "gpus": gpus,
        "cuda_bf16": bool(torch.cuda.is_bf16_supported()) if gpus else None,
    }
