"""The CUDA kernels' logic on the CPU: tests/simt runs cpp/cuda/kernels.cuh through a small SIMT
emulator and checks it against plain references, so that a change to the GPU code is tested where
there is no GPU (the CUDA tests of test_kernel.py need one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SIMT = Path(__file__).resolve().parent / "simt"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the emulator's threads are ucontext coroutines (glibc)"
)
def test_cuda_kernels_on_cpu(tmp_path):
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C++ compiler")
    program = tmp_path / "check_kernels"
    build = subprocess.run(
        [compiler, "-std=c++17", "-O1", "-pthread", str(SIMT / "check_kernels.cpp"), "-o", str(program)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(program)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.rstrip().endswith("0 failures"), run.stdout
