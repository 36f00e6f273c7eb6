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


def test_a_fit_and_its_scores_are_keyed_by_the_versions_of_what_computes_them(monkeypatch):
    """A fit's key holds its edit method's numerics version, a score's its metric's, an
    ablation's the ablations' and its metric's: bumping one refits or rescores only what it
    computes (what every fit shares is in the testbed's key, `tests/run/test_identity.py`)."""
    from loccheck.numerics import NUMERICS
    from loccheck.run.ablations import AblationJob

    def keys():
        job, ablation = _job(), AblationJob(LOC, "mean", 0, "claim", None, "b" * 64)
        return {"fit": job.key, "score": job.score_key("preference_margin"),
                "ablation": ablation.score_key("preference_margin", None)}
    before = keys()
    changed = {"edits.iti": {"fit", "score"}, "activations": {"fit", "score"},   # ITI's directions
               "metrics.preference_margin": {"fit", "score", "ablation"},   # ITI picks alpha by it
               "ablations": {"ablation"},
               "edits.optimal": set(), "metrics.mc1": set(), "models": set()}   # models: in the testbed key
    for component, expected in changed.items():
        with monkeypatch.context() as m:
            m.setitem(NUMERICS, component, NUMERICS[component] + 1)
            now = keys()
        assert {k for k in now if now[k] != before[k]} == expected, component
    assert keys() == before


_KEYS = """
import json
from loccheck.edits.iti import ITISettings
from loccheck.locations import HeadLoc
from loccheck.models.activations import activations_key
from loccheck.run.ablations import AblationJob
from loccheck.run.jobs import Job

class Adapter:
    def describe(self):
        return {"family": "llama"}
loc = (HeadLoc(0, 1),)
job = Job("iti", ITISettings((0.0, 5.0), "answer", "preference_margin"), loc, "claim", None, "b" * 64)
print(json.dumps({"fit": job.key, "score": job.score_key("mc1"),
                  "ablation": AblationJob(loc, "zero", 0, "claim", None, "b" * 64).score_key("mc1", None),
                  "activations": activations_key(["a text"], model_sha="c" * 64, adapter=Adapter())}))
"""


def _keys_of(root) -> dict:
    import json
    import subprocess
    import sys

    # run in `root`: `python -c` puts the working folder first on the path; no .pyc, which an
    # edit of the same second and size would hide behind
    out = subprocess.run([sys.executable, "-c", _KEYS], cwd=root, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(root), "PATH": "", "PYTHONDONTWRITEBYTECODE": "1"})
    return json.loads(out.stdout)


def test_a_release_that_changes_no_numbers_keeps_every_key(tmp_path):
    """The keys of a copy of loccheck with another version, a comment and a docstring changed in
    an edit module and a changed report are the keys of this one; a bumped numerics version is
    not."""
    import re
    import shutil
    from pathlib import Path

    import loccheck

    here = Path(loccheck.__file__).parent
    copy = tmp_path / "release" / "loccheck"
    shutil.copytree(here, copy, ignore=shutil.ignore_patterns("__pycache__"))
    init = copy / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{loccheck.__version__}"', '__version__ = "9.0.0"'))
    iti = copy / "edits" / "iti.py"
    iti.write_text('"""Another docstring."""\n# a new comment\n' + iti.read_text().split('"""', 2)[2])
    (copy / "report" / "markdown.py").write_text((copy / "report" / "markdown.py").read_text()
                                                  + "\n\ndef a_new_section():\n    return []\n")
    assert _keys_of(copy.parent) == _keys_of(here.parent)
    numerics = copy / "numerics.py"
    numerics.write_text(re.sub(r'"edits.iti": (\d+),', lambda m: f'"edits.iti": {int(m[1]) + 1},',
                               numerics.read_text(), count=1))
    bumped = _keys_of(copy.parent)
    assert bumped["fit"] != _keys_of(here.parent)["fit"] and bumped["ablation"] == _keys_of(here.parent)["ablation"]
