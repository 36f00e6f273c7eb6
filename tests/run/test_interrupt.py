"""Interrupted runs: `loccheck verify` killed mid-run (SIGKILL: no handler, no cleanup) leaves
no report and no partial cache entry, and the next run fits only what was not fitted yet and
gives the same result.json as a run that was never interrupted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from loccheck.testing import claim_text
from loccheck.cache import content_key
from loccheck.claim import load_claim
from loccheck.run.verify import verify

pytestmark = pytest.mark.slow   # kills and resumes a run that fits edits (torch)

N = 60            # random pairs: about 27 distinct fits after the claim and the whole model
TIMEOUT = 180     # seconds for the subprocess to reach its third fitted edit


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "fits").rglob("*.json")) if (cache / "fits").is_dir() else []


def _n_fits(cache: Path) -> int:
    """Cache entries that are fitted edits (scores, per fit and metric, are entries too)."""
    return sum("method" in json.loads(p.read_text())["record"] for p in _entries(cache))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)   # as the subprocess (OMP_NUM_THREADS=1): same sums, same bits
    yield
    torch.set_num_threads(before)


def test_killed_run_leaves_no_partial_output_and_resumes(known_llama, tmp_path):
    model_dir, pairs = known_llama
    claim_path = tmp_path / "interrupted.yaml"
    claim_path.write_text(claim_text(model_dir, pairs, ["L1H2", "L0H0"], n=N, alpha=0.05, stop="full").replace(
        "epochs: 3", "epochs: 6"))
    cache, out = tmp_path / "cache", tmp_path / "out"
    env = {**os.environ, "LOCCHECK_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "stderr.txt", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "loccheck", "verify", str(claim_path),
                             "--out", str(out), "--quiet"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + TIMEOUT
        # claim, whole model and a random fit stored: then more random fits are under way
        while _n_fits(cache) < 3:
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "the run never reached its third fitted edit"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it was killed"

    # No report: nothing named report.md or result.json anywhere under --out.
    assert not out.exists() or not [p for p in out.rglob("*") if p.name in ("report.md", "result.json")]
    # No partial cache entry: every entry parses and passes its checksum.
    for path in _entries(cache):
        entry = json.loads(path.read_text())
        assert entry["key"] == path.stem and entry["checksum"] == content_key(entry["record"])
    stray = [p.name for p in cache.rglob(".*.tmp")]
    print(f"\nkilled after {len(_entries(cache))} cache entries; stray temp files: {stray or 'none'}")

    claim = load_claim(claim_path)
    done = _n_fits(cache)
    resumed = verify(claim, out_dir=out / claim.name, cache_dir=cache, progress=False)
    # claim, whole model, each distinct random pair other than the claim
    draws = {tuple(e["location"]) for e in resumed.edits if e["role"] == "random"}
    total = 2 + len(draws - {tuple(resumed.location)})
    assert 2 <= done < total
    assert resumed.n_fitted == total - done                       # only what was missing
    assert (out / claim.name / "result.json").is_file()

    clean = verify(claim, out_dir=tmp_path / "clean", cache_dir=tmp_path / "clean-cache",
                   progress=False)
    assert clean.n_fitted == total
    assert (out / claim.name / "result.json").read_bytes() == \
        (tmp_path / "clean" / "result.json").read_bytes()
