"""The machine a benchmark ran on, recorded next to its results so a number can be traced to its CPU."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    """The model name from /proc/cpuinfo, with family and model (a VM may show only "AMD EPYC")."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.machine())
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def describe(gpu: bool = False) -> dict:
    """CPU, cores, RAM, versions, obce's build and the 1-minute load average; the GPU's name if ``gpu``."""
    import obce

    info = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "build_info": obce.build_info(),
        "gpu": None,
        "load_average_1m": os.getloadavg()[0],
    }
    try:
        info["ram_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        info["ram_gib"] = None
    try:
        import torch
    except ImportError:
        return info
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    if gpu:
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info


def summary(info: dict) -> str:
    """One line for a results file: CPU, cores, SIMD level, torch, GPU."""
    parts = [f"{info['cpu']}, {info['cores']} cores", f"obce SIMD {info['build_info'].get('cpu_simd')}"]
    if "torch" in info:
        parts.append(f"torch {info['torch']} ({info['torch_threads']} threads)")
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']}")
    return ", ".join(parts)
