"""The GPU path: a claim verified on CUDA gives the CPU's verdict and gains within a stated
tolerance, in float32 and in bfloat16. Skipped where no CUDA device is present (CI)."""
from __future__ import annotations

import pytest
import torch

from loccheck.claim import parse_claim
from loccheck.testing import claim_text
from loccheck.run.verify import verify

pytestmark = pytest.mark.slow   # CUDA and tiny torch models
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Kernels differ between devices (reduction order, TF32 off by default for matmuls in float32),
# so gains agree to a tolerance, not bit for bit.
CPU_CUDA_RTOL = 0.02


def _verify(known_llama, tmp_path, device: str, dtype: str = "float32"):
    model_dir, pairs = known_llama
    text = claim_text(model_dir, pairs, ["L1H2"], n=19, random_seed=3, stop="full").replace(
        "device: cpu", f"device: {device}, dtype: {dtype}")
    claim = parse_claim(text, path=tmp_path / f"{device}-{dtype}.yaml")
    return verify(claim, write_report=False, cache_dir=tmp_path / "cache", progress=False)


@pytest.mark.gpu
@cuda
def test_cuda_gives_the_cpu_verdict_and_gains(known_llama, tmp_path):
    cpu, cuda = _verify(known_llama, tmp_path, "cpu"), _verify(known_llama, tmp_path, "cuda")
    assert cuda.payload["model"]["device"].startswith("cuda")
    assert cuda.verdict == cpu.verdict
    assert cuda.claim_gain == pytest.approx(cpu.claim_gain, rel=CPU_CUDA_RTOL)
    assert cuda.ceiling_gain == pytest.approx(cpu.ceiling_gain, rel=CPU_CUDA_RTOL)


@pytest.mark.gpu
@cuda
def test_bfloat16_on_cuda_scores_like_float32(known_llama, tmp_path):
    full, half = _verify(known_llama, tmp_path, "cuda"), _verify(known_llama, tmp_path, "cuda", "bfloat16")
    assert half.payload["model"]["dtype"] == "bfloat16"
    assert half.verdict == full.verdict
    assert half.claim_gain == pytest.approx(full.claim_gain, rel=0.05)
