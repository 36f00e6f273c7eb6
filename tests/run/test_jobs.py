"""Jobs, fit records and executors: small picklable values with their own cache keys, and the
serial executor that every other executor must agree with. No torch."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from loccheck.edits.iti import ITISettings
from loccheck.run.executors import SerialExecutor, get_executor
from loccheck.errors import LoccheckError
from loccheck.run.jobs import FitRecord, Job, JobRunner
from loccheck.locations import HeadLoc

LOC = (HeadLoc(0, 1), HeadLoc(3, 2))


def _job(**kw):
    base = dict(method="iti", settings=ITISettings((0.0, 5.0), "answer", "preference_margin"), location=LOC,
                role="random", index=4, testbed_key="b" * 64)
    return Job(**{**base, **kw})


def test_a_job_pickles_and_names_its_cache_key():
    job = _job()
    back = pickle.loads(pickle.dumps(job))
    assert back == job and back.key == job.key and len(job.key) == 64
    assert job.label == "random 4 [iti]" and job.location_text == ["L0H1", "L3H2"]


def test_role_and_index_are_not_part_of_the_key():
    # a random draw equal to another claim's location reuses its fit
    assert _job(role="claim", index=None).key == _job().key
    for change in (dict(settings=ITISettings((0.0, 10.0), "answer", "preference_margin")), dict(location=LOC[:1]),
                   dict(location=None), dict(method="optimal"), dict(testbed_key="c" * 64),
                   dict(continued_from="d" * 64)):
        assert _job(**change).key != _job().key, change


def test_scores_are_keyed_per_fit_and_metric():
    job = _job()
    keys = {job.score_key("preference_margin"), job.score_key("preference_accuracy"),
            _job(location=None).score_key("preference_margin")}
    assert len(keys) == 3 and job.key not in keys


def test_fit_record_round_trips_its_parameters_bit_for_bit():
    rng = np.random.default_rng(0)
    state = {"a": rng.normal(size=(3, 8)).astype(np.float32),
             "b": np.array([[np.float32(1e-38), -0.0, np.inf]], dtype=np.float32)}
    record = FitRecord("optimal", ["L0H1"], 19, {"steps": 4, "loss_curve": [1.0, 0.5]}, state)
    back = FitRecord.from_json(pickle.loads(pickle.dumps(record.to_json())))
    assert back.info == record.info and back.n_params == 19 and set(back.state) == {"a", "b"}
    for name in state:
        assert back.state[name].dtype == np.float32
        assert back.state[name].tobytes() == state[name].tobytes()


def test_a_runner_pickles_without_its_testbed_and_progress_callback():
    # the callback reports to this process's progress; a lambda could not be pickled at all
    runner = JobRunner(testbed=object(), cache=None, metrics=["preference_margin"],
                       testbed_factory=None, on_step=lambda step, n, loss: None)
    clone = pickle.loads(pickle.dumps(runner))
    assert clone.testbed is None and clone.on_step is None and clone.metrics == ("preference_margin",)


def test_serial_executor_yields_in_job_order():
    ex = get_executor("serial")
    assert isinstance(ex, SerialExecutor) and ex.name == "serial" and ex.width == 1
    assert list(ex.imap(lambda x: x * x, [3, 1, 2])) == [(0, 9), (1, 1), (2, 4)]
    assert get_executor(ex) is ex
    with pytest.raises(LoccheckError, match="unknown executor 'dask'") as info:
        get_executor("dask")
    assert info.value.key == "executor"


def test_the_code_that_computes_is_part_of_every_key(tmp_path, monkeypatch):
    """A change to loccheck's source (or to a library's version) changes the identity that
    every fit's and score's cache key is built on, so no fit made by other code is served."""
    import loccheck
    from loccheck import cache

    first = cache.code_identity()
    assert first["loccheck"] == loccheck.__version__ and len(first["source_sha256"]) == 64
    assert set(first) >= {"torch", "transformers", "peft", "numpy"}
    monkeypatch.setattr(cache, "_CODE_IDENTITY", None)
    fake = tmp_path / "loccheck"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '0.1.0'\n")
    monkeypatch.setattr(loccheck, "__file__", str(fake / "__init__.py"))
    other = cache.code_identity()
    assert other["loccheck"] == first["loccheck"] and other["source_sha256"] != first["source_sha256"]
