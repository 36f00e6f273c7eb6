"""Two `loccheck verify` processes sharing one cache folder at the same time (a CI matrix)
give the results one process gives alone, and leave only sound cache entries."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from loccheck.cache import FitCache
from loccheck.testing import claim_text

pytestmark = pytest.mark.slow   # three CLI runs on a tiny model


def _numbers(result: dict) -> dict:
    """What must not depend on who fitted: the verdict, the test and every edit's record."""
    edits = [{k: v for k, v in e.items() if k != "seconds"} for e in result["edits"]]
    return {"tests": result["tests"], "edits": edits, "base": result["base_metrics"]}


def _start(claim: Path, out: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "LOCCHECK_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "loccheck", "verify", str(claim), "--out", str(out),
                             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_sharing_a_cache_agree_with_one_run_alone(known_llama, tmp_path):
    model_dir, pairs = known_llama
    claim = tmp_path / "claim.yaml"
    claim.write_text(claim_text(model_dir, pairs, ["L1H2"], n=19, stop="full"))
    shared = tmp_path / "shared-cache"
    runs = [_start(claim, tmp_path / f"out{i}", shared) for i in range(2)]   # at the same time
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode in (0, 1), err          # 1: a verdict other than expected
        assert "corrupt" not in err and "Traceback" not in err
    alone = _start(claim, tmp_path / "alone", tmp_path / "own-cache")
    _, err = alone.communicate(timeout=600)
    assert alone.returncode in (0, 1), err

    results = [json.loads((tmp_path / d / "claim" / "result.json").read_text()) for d in ("out0", "out1", "alone")]
    assert _numbers(results[0]) == _numbers(results[2]) == _numbers(results[1])

    entries = sorted((shared / "fits").rglob("*.json"))
    assert entries and not list((shared / "fits").rglob("*.tmp"))       # no half-written entry
    cache = FitCache(shared)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                  # a corrupt entry warns
        for path in entries:
            entry = json.loads(path.read_text())
            assert cache.get(entry["key"]) == entry["record"]
