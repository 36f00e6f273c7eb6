"""The Ray executor against a local Ray cluster started here (2 CPUs): the same numbers as the
serial executor (a verification's fits, and trace-vs-edit's one-fact edits), a killed worker
costs only its unfinished fit, an impossible request fails at once."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from loccheck.claim import parse_claim  # noqa: E402
from loccheck.errors import LoccheckError  # noqa: E402
from loccheck.run.executors import RayExecutor  # noqa: E402
from loccheck.locations import MlpLoc  # noqa: E402
from loccheck.testing import claim_text, write_tracing_claim  # noqa: E402
from loccheck.run.verify import verify  # noqa: E402

pytestmark = pytest.mark.slow   # a Ray cluster and tiny torch models


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _claim(known_llama, tmp_path, **kw):
    model_dir, pairs = known_llama
    return parse_claim(claim_text(model_dir, pairs, ["L1H2", "L0H0"], n=19, stop="full", **kw),
                       path=tmp_path / "spread.yaml")


def _fits(cache) -> int:
    return sum("state" in json.loads(p.read_text())["record"] for p in (cache / "fits").rglob("*.json"))


def test_ray_gives_the_serial_numbers(cluster, known_llama, tmp_path, one_torch_thread):
    claim = _claim(known_llama, tmp_path)
    serial = verify(claim, write_report=False, cache_dir=tmp_path / "serial", progress=False)
    executor = RayExecutor(cpus_per_worker=1)
    assert executor.width == 2
    spread = verify(claim, write_report=False, cache_dir=tmp_path / "ray", progress=False, executor=executor)
    executor.shutdown()
    assert spread.n_fitted == serial.n_fitted > 2
    assert spread.payload["executor"] == "ray"
    assert {**spread.payload, "executor": "serial"} == serial.payload    # every number, in job order


@pytest.mark.parametrize("location", ["{sites: [L1N5, L0N60]}", "{subspace: {layer: 0, basis: basis.npy}}",
                                      "{latents: [3, 0], dictionary: {path: sae.npy, layer: 1}}",
                                      "{from_heuristic: true}\nheuristic: {method: direction_probe, top_k: 1}"])
def test_ray_gives_the_serial_numbers_at_neurons_subspaces_and_latents(cluster, known_llama, tmp_path,
                                                                       one_torch_thread, location):
    """Each worker reads the basis or the dictionary again, from the claim, or is given the
    subspace the heuristic proposed."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.save(tmp_path / "basis.npy", rng.standard_normal((2, 32)))
    np.save(tmp_path / "sae.npy", rng.standard_normal((16, 32)).astype(np.float32))
    model_dir, pairs = known_llama
    claim = parse_claim(claim_text(model_dir, pairs, ["L1H2"], n=4, stop="full").replace(
        "location: {sites: [L1H2]}", f"location: {location}"), path=tmp_path / "kinds.yaml")
    serial = verify(claim, write_report=False, cache_dir=tmp_path / "serial", progress=False)
    executor = RayExecutor(cpus_per_worker=1)
    spread = verify(claim, write_report=False, cache_dir=tmp_path / "ray", progress=False, executor=executor)
    executor.shutdown()
    assert spread.n_fitted == serial.n_fitted >= 6
    assert {**spread.payload, "executor": "serial"} == serial.payload


def test_trace_vs_edit_on_ray_gives_the_serial_numbers(cluster, tmp_path, one_torch_thread):
    from loccheck.claim import load_claim
    from loccheck.studies.trace_vs_edit.command import trace_vs_edit

    claim = load_claim(write_tracing_claim(tmp_path, [MlpLoc(2)], n_layers=4))
    run = dict(corruptions=["noise", "subject_flip"], write_line=lambda line: None)
    serial = trace_vs_edit(claim, out_dir=tmp_path / "serial", cache_dir=tmp_path / "serial-cache", **run)
    executor = RayExecutor(cpus_per_worker=1)
    spread = trace_vs_edit(claim, out_dir=tmp_path / "ray", cache_dir=tmp_path / "ray-cache",
                           executor=executor, **run)
    assert [ray.get_actor(f"loccheck-worker-{i}") for i in range(2)]   # its pool: 2 workers
    executor.shutdown()
    assert serial["n_facts"] >= 4 and len(spread["success"]) == 4 * serial["n_facts"]
    assert spread["success"] == serial["success"] and spread["row_layers"] == serial["row_layers"]
    assert spread["rows"] == serial["rows"]                  # every tracing value, in order
    assert spread == serial                                  # and every regression


class _KillsItsWorkers(RayExecutor):
    """The Ray executor, whose workers are killed the moment its `after`-th fit comes back: a
    point this test chooses, in the run's own thread. verify() fits in waves of the width (2),
    so the other worker of that wave is then inside its fit (or, rarely, just done with it)."""

    def __init__(self, after: int, **options):
        super().__init__(**options)
        self.after, self.returned, self.pids = after, 0, []

    def imap(self, fn, jobs):
        if not self.pids:        # the workers' processes, asked before they are given a job
            self.pids = ray.get([w.__ray_call__.remote(lambda worker: os.getpid()) for w in self._pool(fn)])
        for item in super().imap(fn, jobs):
            self.returned += 1
            if self.returned == self.after:
                for i in range(self.width):
                    ray.kill(ray.get_actor(f"loccheck-worker-{i}"))
            yield item


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:                                     # a zombie has stopped too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def test_a_killed_worker_costs_only_its_unfinished_fit(cluster, known_llama, tmp_path, one_torch_thread):
    claim = _claim(known_llama, tmp_path)
    cache = tmp_path / "cache"
    executor = _KillsItsWorkers(3, cpus_per_worker=1)
    with pytest.raises(LoccheckError, match="a Ray worker died while fitting .* run again"):
        verify(claim, write_report=False, cache_dir=cache, progress=False, executor=executor)
    assert executor.returned in (3, 4) and len(executor.pids) == 2
    # Ray reports a killed actor before its process has exited: count the fits once no worker
    # can write another
    deadline = time.monotonic() + 60
    while not all(_gone(pid) for pid in executor.pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(_gone(pid) for pid in executor.pids)
    done = _fits(cache)
    again = verify(claim, write_report=False, cache_dir=cache, progress=False)   # serial resumes
    assert done >= 3 and again.n_fitted >= 1                 # it was killed midway
    assert again.n_fitted == _fits(cache) - done             # nothing finished was fitted twice


def test_a_request_the_cluster_cannot_meet_fails_at_once(cluster):
    start = time.monotonic()
    with pytest.raises(LoccheckError, match="no worker of 1 CPUs and 1 GPUs fits"):
        RayExecutor(gpus_per_worker=1).width
    with pytest.raises(LoccheckError, match="3 Ray workers of 1 CPUs and 0 GPUs need more"):
        RayExecutor(workers=3).width
    assert time.monotonic() - start < 5
