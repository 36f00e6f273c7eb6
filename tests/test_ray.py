"""The Ray executor against a local Ray cluster started here (2 CPUs): the same numbers as the
serial executor (a verification's fits, and trace-vs-edit's one-fact edits), a killed worker
costs only its unfinished fit, an impossible request fails at once."""
from __future__ import annotations

import json
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from loccheck.claim import parse_claim  # noqa: E402
from loccheck.errors import LoccheckError  # noqa: E402
from loccheck.executors import RayExecutor  # noqa: E402
from loccheck.locations import MlpLoc  # noqa: E402
from loccheck.testing import claim_text, write_tracing_claim  # noqa: E402
from loccheck.verification import verify  # noqa: E402

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


def test_trace_vs_edit_on_ray_gives_the_serial_numbers(cluster, tmp_path, one_torch_thread):
    from loccheck.claim import load_claim
    from loccheck.trace_vs_edit import trace_vs_edit

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


def test_a_killed_worker_costs_only_its_unfinished_fit(cluster, known_llama, tmp_path, one_torch_thread):
    claim = _claim(known_llama, tmp_path)
    cache = tmp_path / "cache"
    executor = RayExecutor(cpus_per_worker=1)
    failure = []

    def run():
        try:
            verify(claim, write_report=False, cache_dir=cache, progress=False, executor=executor)
        except LoccheckError as err:
            failure.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while (not (cache / "fits").exists() or _fits(cache) < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in range(2):
        ray.kill(ray.get_actor(f"loccheck-worker-{i}"))
    thread.join(timeout=120)
    assert failure and "a Ray worker died" in str(failure[0]) and "run again" in str(failure[0])
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
