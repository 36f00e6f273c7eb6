"""The second pass of `.ci/run` forces the kernels of a CPU without AVX-512 or AMX. Each of its
three variables must really take effect on this torch, or that pass would test nothing new."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow   # torch in a subprocess

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
PROBE = """
import torch
print("aten", torch.backends.cpu.get_cpu_capability(), flush=True)
a = torch.randn(64, 64)
a @ a                                                      # MKL's sgemm
x, w = torch.randn(8, 32, 64, 64), torch.randn(64, 32, 3, 3)
torch.nn.functional.conv2d(x, w)                           # oneDNN's convolution
"""


def _probe(env: dict) -> str:
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env, "MKL_VERBOSE": "1", "ONEDNN_VERBOSE": "1"})
    assert run.returncode == 0, run.stderr
    return run.stdout + run.stderr


def test_the_avx2_variables_take_effect():
    import torch

    config = torch.__config__.show()
    out = _probe(AVX2)
    assert "aten AVX2" in out                                    # ATen's vectorised kernels
    if "Math Kernel Library" in config:
        banner = next(line for line in out.splitlines() if line.startswith("MKL_VERBOSE oneMKL"))
        assert "(Intel(R) AVX2)" in banner and "AVX-512" not in banner
    if "MKL-DNN" in config:
        assert "isa:Intel AVX2" in out and "AVX-512" not in out.split("isa:")[1].splitlines()[0]
