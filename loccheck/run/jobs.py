"""Jobs and their records: the unit of work of a verification.

A `Job` (an edit method's settings, a location, its role and index) is a small picklable
value that names its own cache key; `run_job` fits it (or finds the fit in the cache), stores
the fitted edit's parameters with its record, and scores it on every requested metric that is
not cached yet. Scores are cached per (fit, metric), so a metric added to a claim later scores
the stored edits without refitting them. The role and index are not part of the key: a random
draw equal to another claim's location reuses its fit.
"""
from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from loccheck.cache import content_key
from loccheck.errors import LoccheckError
from loccheck.locations import format_location
from loccheck.numerics import versions

@dataclass(frozen=True)
class Job:
    method: str                  # a registered edit method
    settings: Any                # what determines the fit: the method's EditSettings
    location: tuple | None       # sorted sites; None is the whole model (the ceiling)
    # "claim", "ceiling", "random", "whole_model" (beside a layer's ceiling), "without" (the whole
    # model without the claim), "minus" (the claim without its site `index`), "size" (size curve)
    role: str
    index: int | None            # the draw's index for roles "random" and "size", the site left out for "minus"
    testbed_key: str               # identity of the model and data (Testbed.key)
    continued_from: str | None = None   # the key of the fitted edit `start` holds
    size: int | None = None             # role "size" (the size curve): the location's size
    # a fitted edit to start from, (settings, location, state)
    start: tuple | None = field(default=None, compare=False, repr=False)

    @property
    def location_text(self) -> list[str] | str:
        return "all" if self.location is None else format_location(self.location)

    @property
    def key(self) -> str:
        start = {"continued_from": self.continued_from} if self.continued_from is not None else {}
        return content_key({"what": "fit", "testbed": self.testbed_key, "method": self.method,
                            "numerics": versions(f"edits.{self.method}", *self.settings.numerics()),
                            "settings": self.settings.to_json(), "location": self.location_text, **start})

    def score_key(self, metric: str, inputs: dict | None = None) -> str:
        """`inputs`: what the metric's input depends on beyond the testbed (`Testbed.input_identity`)."""
        what = {"what": "score", "fit": self.key, "metric": metric, "numerics": versions(f"metrics.{metric}"),
                "split": "test"}
        return content_key(what if inputs is None else {**what, "inputs": inputs})

    @property
    def label(self) -> str:
        name = {"claim": "claim", "ceiling": "whole model", "whole_model": "whole model (every head)",
                "without": "whole model without the claim",
                "minus": f"claim without site {self.index}",
                "size": f"random {self.size}-site location {self.index}"}.get(self.role, f"random {self.index}")
        if self.continued_from is not None:
            name += " (continued)"
        return f"{name} [{self.method}]"


@dataclass(frozen=True)
class FitRecord:
    """A fitted edit: its parameters (float32 arrays) and what its method reports about the fit."""
    method: str
    location: list[str] | str
    n_params: int
    info: dict
    state: dict[str, np.ndarray]

    def to_json(self) -> dict:
        return {"method": self.method, "location": self.location, "n_params": self.n_params,
                "info": self.info, "state": encode_state(self.state)}

    @classmethod
    def from_json(cls, data: dict) -> "FitRecord":
        return cls(data["method"], data["location"], int(data["n_params"]), dict(data["info"]),
                   decode_state(data["state"]))


def encode_state(state: dict[str, np.ndarray]) -> dict:
    """A fit's parameters as JSON: float32 arrays, base64, by name (a cache entry's, a bundle's)."""
    return {k: _encode(v) for k, v in sorted(state.items())}


def decode_state(data: dict) -> dict[str, np.ndarray]:
    return {k: _decode(v) for k, v in data.items()}


def _encode(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return {"shape": list(array.shape), "float32": base64.b64encode(array.tobytes()).decode("ascii")}


def _decode(data: dict) -> np.ndarray:
    raw = base64.b64decode(data["float32"].encode("ascii"), validate=True)
    return np.frombuffer(raw, dtype=np.float32).reshape(data["shape"]).copy()


@dataclass(frozen=True)
class EditOutcome:
    """What a verification gets back for one job: the fit's facts and its test scores."""
    job: Job
    n_params: int
    info: dict
    metrics: dict[str, float]
    fitted: bool                 # fitted by this run (False: the fit came from the cache)
    n_scored: int                # metrics scored by this run (not from the cache)
    seconds: float
    score_seconds: dict = field(default_factory=dict)   # metric -> seconds this run spent scoring it
    state: dict | None = field(default=None, repr=False, compare=False)   # the fit's parameters (small)
    superseded: tuple = ()       # earlier outcomes of the same role this one replaces (a continued ceiling)
    generations: dict | None = None                     # its judged answers' record (generation metrics)

    @property
    def diverged(self) -> bool:
        """Its training blew up: it has no optimum to compare. (A score that is not finite is
        that metric's missing value, not a diverged edit.)"""
        return diverged(self.info)

    def record(self, base: dict[str, float]) -> dict:
        """The edit's entry in result.json."""
        return {"method": self.job.method, "role": self.job.role, "index": self.job.index,
                **({"size": self.job.size} if self.job.size is not None else {}),
                "location": self.job.location_text, "n_params": self.n_params,
                "metrics": self.metrics, "gains": {m: v - base[m] for m, v in self.metrics.items()},
                **self.info, "diverged": self.diverged,
                **({"generations": self.generations} if self.generations is not None else {})}


def every_run(outcomes) -> list[EditOutcome]:
    """The outcomes with the ones they superseded: what a run fitted and scored."""
    return [run for o in outcomes for run in (*o.superseded, o)]


def diverged(info: dict) -> bool:
    return info.get("stopped") == "diverged"


class TestbedRunner:
    """A callable an executor maps over jobs, against one testbed.

    The testbed (a loaded model) is not pickled: an executor in another process gives the
    runner a testbed of its own there (`testbed_factory`)."""

    def __init__(self, testbed, cache, testbed_factory=None):
        self.testbed, self.cache, self.testbed_factory = testbed, cache, testbed_factory

    def __getstate__(self):
        return {**self.__dict__, "testbed": None}

    def testbed_for(self, job):
        """This process's testbed, which must be the one `job` was planned on."""
        if self.testbed is None:
            self.testbed = self.testbed_factory()
        if self.testbed.key != job.testbed_key:   # another model, code or device than the driver's
            raise LoccheckError(f"this worker's testbed ({_testbed_summary(self.testbed)}) is not the one "
                                f"{job.label} was planned on: install the same loccheck and libraries, "
                                "give it the same model files, and set model.device explicitly",
                                key="executor")
        return self.testbed


class JobRunner(TestbedRunner):
    """Runs edit jobs: fits (or finds) each and scores it on `metrics`."""

    def __init__(self, testbed, cache, metrics: Sequence[str], testbed_factory=None, on_step=None):
        super().__init__(testbed, cache, testbed_factory)
        self.metrics = tuple(metrics)
        self.on_step = on_step           # (step, n_steps, loss) while a fit runs in this process

    def __getstate__(self):
        return {**super().__getstate__(), "on_step": None}   # another process reports no steps

    def __call__(self, job: Job) -> EditOutcome:
        return run_job(self.testbed_for(job), self.cache, job, self.metrics, on_step=self.on_step)


def _testbed_summary(testbed) -> str:
    info = testbed.loaded.info
    return f"{info['name']} on {info['device']} in {info['dtype']}"


def run_job(testbed, cache, job: Job, metrics: Sequence[str], on_step=None) -> EditOutcome:
    """Fit `job` unless its fit is cached, then score every metric not cached for it. A
    diverged fit and a score that is not finite are never cached: they are reported as such,
    and fitted again by the next run rather than trusted."""
    from loccheck.edits import EDIT_METHODS
    from loccheck.metrics import METRICS

    method = EDIT_METHODS[job.method]
    start = time.monotonic()
    stored = cache.get(job.key)
    record = _record_or_none(stored, job)
    if stored is not None and record is None:
        cache.discard(job.key, f"not a fit of {job.label} at {job.location_text}")
    edit, fitted = None, record is None
    if fitted:
        made = method.fit(testbed, job.settings, job.location, on_step=on_step,
                          **({"start": job.start} if job.start is not None else {}))
        edit = made.edit
        record = FitRecord(job.method, job.location_text, edit.n_params, made.info, edit.state())
        if not diverged(made.info):
            cache.put(job.key, record.to_json())
    keys = {m: job.score_key(m, testbed.input_identity(METRICS[m].needs)) for m in metrics}
    score_seconds: dict[str, float] = {}
    scores = _cached_scores(cache, keys)
    missing = [m for m, v in scores.items() if v is None]
    if missing:
        if edit is None:
            edit = method.restore(testbed, job.settings, job.location, record.state)
        fresh = {}
        with edit.attached(testbed.model):
            for need in dict.fromkeys(METRICS[m].needs for m in missing):   # timed per input
                group = [m for m in missing if METRICS[m].needs == need]
                began = time.monotonic()
                fresh.update(testbed.score(group, on_batch=edit.on_batch))
                seconds = time.monotonic() - began
                score_seconds.update({m: seconds / len(group) for m in group})
        for m in missing:
            scores[m] = {"value": fresh[m], **_answers_of(testbed, m)}
            if diverged(record.info) or not math.isfinite(fresh[m]):
                continue
            cache.put(keys[m], scores[m])
    return EditOutcome(job, record.n_params, record.info, {m: scores[m]["value"] for m in metrics},
                       fitted=fitted, n_scored=len(missing), seconds=time.monotonic() - start,
                       score_seconds=score_seconds, state=record.state, generations=generations_of(scores))


def _answers_of(testbed, metric: str) -> dict:
    """A generation metric's score keeps the judged answers' record beside its value (cached with
    it), so a report rendered from cached scores still shows the answers."""
    from loccheck.metrics import METRICS

    return {"generations": testbed.last_generations} if METRICS[metric].needs == "generations" else {}


def generations_of(scores: dict) -> dict | None:
    """The judged answers' record among an edit's score entries (None without generation metrics)."""
    return next((e["generations"] for e in scores.values() if isinstance(e, dict) and e.get("generations")), None)


def _cached_scores(cache, keys: dict[str, str]) -> dict[str, dict | None]:
    """{metric: {"value": float} or None (not cached)}; an entry that is not a finite number is
    reported and scored again."""
    out = {}
    for metric, key in keys.items():
        entry = cache.get(key)
        value = entry.get("value") if isinstance(entry, dict) else None
        if isinstance(value, float) and math.isfinite(value):
            out[metric] = entry
        else:
            if entry is not None:
                cache.discard(key, f"{metric} is not a finite number")
            out[metric] = None
    return out


def _record_or_none(stored, job: Job) -> FitRecord | None:
    """The stored fit, if it is one of this job's edit (anything else is fitted again)."""
    if stored is None:
        return None
    try:
        record = FitRecord.from_json(stored)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if record.method != job.method or record.location != job.location_text or diverged(record.info):
        return None
    return record


def unedited_scores(testbed, cache, metrics: Sequence[str]) -> dict[str, float]:
    """The unedited model's test metrics, cached per metric like an edit's."""
    from loccheck.metrics import METRICS

    keys = {m: content_key({"what": "unedited score", "testbed": testbed.key, "metric": m,
                            "numerics": versions(f"metrics.{m}"), "split": "test",
                            **({"inputs": i} if (i := testbed.input_identity(METRICS[m].needs)) else {})})
            for m in metrics}
    scores = _cached_scores(cache, keys)
    missing = [m for m, v in scores.items() if v is None]
    if missing:
        fresh = testbed.score(missing)
        for m in missing:
            if not math.isfinite(fresh[m]):
                raise LoccheckError(f"the unedited model's {m} on the test questions is {fresh[m]}: the "
                                    f"model's outputs are not finite in {testbed.loaded.info['dtype']} "
                                    "(try model.dtype: float32)", key="model.dtype")
            scores[m] = {"value": fresh[m], **_answers_of(testbed, m)}
            cache.put(keys[m], scores[m])
    testbed.memo["unedited generations"] = generations_of(scores)
    return {m: scores[m]["value"] for m in metrics}
