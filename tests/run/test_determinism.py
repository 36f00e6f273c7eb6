"""Determinism: the same claim, seed and machine give a bit-identical result.json on the CPU,
fitted twice from scratch; and result.json records what a re-run needs.

Random location i depends on (seed, i) only: tests/stats/test_null.py (test_prefix_stability)
checks it for the sampler, tests/run/test_cache.py
(test_growing_the_null_fits_only_the_new_draws) end to end; not repeated here.
On GPUs, kernels may reorder float sums; no tolerance is claimed here (CPU only).
"""
from __future__ import annotations

import hashlib
import json
import platform

import numpy
import peft
import pytest
import torch
import transformers

import loccheck
from loccheck.testing import claim_text
from loccheck.claim import parse_claim
from loccheck.models.loading import folder_sha256
from loccheck.run.verify import verify

pytestmark = pytest.mark.slow   # fits edits on a tiny model twice (torch)

N = 4


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def runs(known_llama, tmp_path_factory):
    """One claim fitted twice: separate cache folders, so both runs fit every edit."""
    model_dir, pairs = known_llama
    tmp_path = tmp_path_factory.mktemp("determinism")
    path = tmp_path / "determinism.yaml"
    path.write_text(claim_text(model_dir, pairs, ["L1H2", "L0H3"], n=N, alpha=0.2))
    results = [verify(path, out_dir=tmp_path / f"out{i}", cache_dir=tmp_path / f"cache{i}",
                      progress=False) for i in (0, 1)]
    return path, results


def test_two_fits_give_bit_identical_results(runs):
    path, (first, second) = runs
    tmp_path = path.parent
    # claim, whole model, and each distinct random pair other than the claim: nothing cached
    draws = {tuple(e["location"]) for e in first.edits if e["role"] == "random"}
    assert first.n_fitted == second.n_fitted == 2 + len(draws - {tuple(first.location)})
    a = (tmp_path / "out0" / "result.json").read_bytes()
    b = (tmp_path / "out1" / "result.json").read_bytes()
    assert a == b
    assert (tmp_path / "out0" / "report.md").read_bytes() == (tmp_path / "out1" / "report.md").read_bytes()
    assert first.to_json() == json.loads(a)                       # the file is the result


def test_result_records_what_a_rerun_needs(runs, known_llama):
    path, (result, _) = runs
    model_dir, pairs = known_llama
    claim = parse_claim(path.read_text(), path=path)
    r = result.payload
    assert r["versions"] == {"python": platform.python_version(), "torch": torch.__version__,
                             "transformers": transformers.__version__,
                             "peft": peft.__version__, "numpy": numpy.__version__,
                             "loccheck": loccheck.__version__}
    assert r["loccheck_version"] == loccheck.__version__
    assert r["model"]["sha256"] == folder_sha256(model_dir)
    assert r["model"]["resolved"] == str(model_dir) and r["model"]["dtype"] == "float32"
    assert r["data"]["sha256"] == hashlib.sha256(pairs.read_bytes()).hexdigest()
    assert r["data"]["source"] == str(pairs)
    assert r["config"] == claim.effective_config()              # every field, defaults filled
    assert r["config"]["edits"][0]["learning_rate"] == 0.05 and r["config"]["edits"][0]["beta"] == 0.1
    assert r["seeds"] == {"edit[0]": 0, "random_locations": 0, "split": 0}
    assert r["claim_file"] == str(path)
