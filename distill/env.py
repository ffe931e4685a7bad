"""The machine and software a result was measured on: CPU model and flags, cores, load, versions, git sha."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "sve",
    "i8mm",
    "bf16",
)
LIBRARIES = ("torch", "transformers", "onnxruntime", "onnx", "numpy", "tokenizers", "datasets")


def available_cores() -> int:
    """CPU cores this process may run on (affinity and cgroup-pinned cores, not the whole machine)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def host_info() -> dict[str, Any]:
    """CPU model, core counts, the SIMD/matrix flags that matter for inference speed, and the platform."""
    cpu_model, flags = "", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware") and not cpu_model:
                cpu_model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    return {
        "cpu": cpu_model or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "available_cores": available_cores(),
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
        "platform": platform.platform(),
    }


def other_cpu_load(seconds: float = 1.0) -> float | None:
    """Cores' worth of CPU time other processes used over ``seconds`` while this one slept (Linux only).

    Unlike the load average, it does not count this process's own recent work (such as training just before).
    """
    stat = Path("/proc/stat")
    if not stat.is_file():
        return None

    def busy_and_total() -> tuple[int, int]:
        fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields) - idle, sum(fields)

    busy_start, total_start = busy_and_total()
    time.sleep(seconds)
    busy_end, total_end = busy_and_total()
    if total_end == total_start:
        return 0.0
    return round((busy_end - busy_start) / (total_end - total_start) * (os.cpu_count() or 1), 2)


def library_versions() -> dict[str, str | None]:
    """Versions of Python and the libraries whose behaviour shapes the numbers (``None`` when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_sha() -> str | None:
    """The commit distill runs from, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(processes: int = 1) -> dict[str, Any]:
    """What the manifest records for each completed stage."""
    return {"versions": library_versions(), "host": host_info(), "git_sha": git_sha(), "processes": processes}
