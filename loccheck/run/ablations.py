"""Ablation jobs: the necessity test's unit of work. An ablation trains nothing: its score is the
verdict metric on the test questions with a location removed (`loccheck.ablations`), cached
per (testbed, location, ablation, metric) like an edit's score, so a re-run, a larger null or
the same location under another role costs nothing. Ablations run in this process, one after
another: each is one scoring pass, cheaper than shipping the model's activations elsewhere."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from loccheck.cache import content_key
from loccheck.locations import format_location
from loccheck.numerics import versions

# What an ablation's statistics are taken over, in words; the version of the code that computes
# them is NUMERICS["ablations"] (loccheck.numerics), bumped when their numbers change.
ABLATION_RULE = "train tokens of prompt+chosen and prompt+rejected; pool 256 tokens seeded 0"


@dataclass(frozen=True)
class AblationJob:
    location: tuple
    ablation: str                # "mean", "resample", "zero"
    seed: int                    # the resample draws' seed
    role: str                    # "claim", "random", "minus" (minimality), "size" (size curve)
    index: int | None            # the draw's index, or the site left out
    testbed_key: str

    @property
    def location_text(self) -> list[str]:
        return format_location(self.location)

    def score_key(self, metric: str, inputs: dict | None) -> str:
        what = {"what": "ablation score", "testbed": self.testbed_key, "location": self.location_text,
                "ablation": self.ablation, "rule": ABLATION_RULE, "metric": metric, "split": "test",
                "numerics": versions("ablations", f"metrics.{metric}"),
                **({"seed": self.seed} if self.ablation == "resample" else {})}
        return content_key(what if inputs is None else {**what, "inputs": inputs})


@dataclass(frozen=True)
class AblationOutcome:
    job: AblationJob
    value: float                 # the metric with the location ablated
    drop: float                  # the behaviour lost: the unedited model's improvement over it
    scored: bool                 # scored by this run (False: from the cache)
    seconds: float

    def record(self) -> dict:
        return {"role": self.job.role, "index": self.job.index, "location": self.job.location_text,
                "value": self.value, "drop": self.drop if math.isfinite(self.drop) else None}


def run_ablation(testbed, cache, job: AblationJob, metric: str, base: float, sign: int = 1) -> AblationOutcome:
    """Score `job` (or find its score); its drop is the unedited model's improvement over the
    ablated one, times `sign` (-1 when the behaviour is the pairs' rejected answers: then what
    ablation loses shows as the metric moving toward the chosen ones)."""
    from loccheck.ablations.ablate import ablated
    from loccheck.metrics import METRICS

    began = time.monotonic()
    key = job.score_key(metric, testbed.input_identity(METRICS[metric].needs))
    entry = cache.get(key)
    value = entry.get("value") if isinstance(entry, dict) else None
    scored = not (isinstance(value, float) and math.isfinite(value))
    if scored:
        with ablated(testbed, job.location, job.ablation, job.seed):
            value = testbed.score([metric])[metric]
        if math.isfinite(value):
            cache.put(key, {"value": value})
    return AblationOutcome(job, value, ablation_drop(value, base, metric, sign), scored, time.monotonic() - began)


def ablation_drop(value: float, base: float, metric: str, sign: int) -> float:
    """The behaviour an ablation lost: the unedited model's improvement over the ablated one on
    `metric`, times `sign` (`behavior_sign`). The one definition verify and a replay share."""
    from loccheck.metrics import METRICS

    return sign * METRICS[metric].improvement(base - value)


class AblationProgress:
    """One line per ablation in a CI log is too many for a null of 999: a line at the first,
    then about every 30 s, and at the end."""
    EVERY = 30.0

    def __init__(self, note, total: int, what: str):
        self.note, self.total, self.what = note, total, what
        self.done, self.start, self.last = 0, time.monotonic(), None

    def more(self, n: int) -> None:
        self.total += n

    def __call__(self, outcome: AblationOutcome) -> None:
        self.done += 1
        now = time.monotonic()
        if self.last is not None and now - self.last < self.EVERY and self.done < self.total:
            return
        self.last = now
        how = "scored" if outcome.scored else "from the cache"
        self.note(f"{self.what} [{self.done}/{self.total}] {outcome.job.role}"
                  f"{'' if outcome.job.index is None else ' ' + str(outcome.job.index)}: {how}, drop "
                  f"{outcome.drop:+.3g} ({now - self.start:.0f} s so far)")


def run_necessity(testbed, cache, claim, location, nulls, base: float, note) -> list[AblationOutcome]:
    """The claim's ablation, then the null's in draw order, stopping as `necessity.stop` says
    (the sequential rule of the editing null, on the drops)."""
    from loccheck.stats.pvalues import sequential_decided
    from loccheck.stats.verdict import compared_gains, sequential_h

    spec, alpha, metric = claim.necessity, claim.verdict.alpha, claim.verdict.metric
    sign = behavior_sign(claim)
    make = lambda loc, role, i: AblationJob(loc, spec.ablation, spec.seed, role, i, testbed.key)  # noqa: E731
    progress = AblationProgress(note, 1 + len(nulls), f"necessity ({spec.ablation} ablation)")
    first = run_ablation(testbed, cache, make(location, "claim", None), metric, base, sign)
    progress(first)
    n = len(nulls)
    h = sequential_h(spec.stop, n, alpha)
    done = []
    for i, loc in enumerate(nulls):
        done.append(run_ablation(testbed, cache, make(loc, "random", i), metric, base, sign))
        progress(done[-1])
        claim_drop, null = compared_gains(first.drop, [o.drop for o in done])
        if h is not None and sequential_decided(claim_drop, null, n_max=n, h=h):
            break
    if len(done) < n:
        note(f"necessity: the null is decided after {len(done)} of {n} random locations "
             f"({h} lose as much as the claim); {n - len(done)} not ablated")
    return [first, *done]


def run_ablations(claim, testbed, cache, location, base: float, phase, *, nulls, minus, sizes) -> dict:
    """Every ablation of the claim's tests: the necessity test's (the claim and its `nulls`,
    `run_necessity`), then the claim without each site (`minus`, minimality) and the size
    curve's locations (`sizes`). `phase`: a `progress.Phases`."""
    spec, metric = claim.necessity, claim.verdict.metric
    with phase(f"ablating ({spec.ablation}) the claim and up to {len(nulls)} random locations on the "
               f"{len(testbed.test)} test pairs ({metric})"):
        necessity = run_necessity(testbed, cache, claim, location, nulls, base, phase.note)
    others = ([("minus", k, loc) for k, loc in enumerate(minus)] +
              [("size", k % claim.size_curve.n, loc) for k, loc in enumerate(sizes)])
    done = []
    if others:
        with phase(f"ablating ({spec.ablation}) {len(others)} more locations (minimality, size curve)"):
            done = [run_ablation(testbed, cache, AblationJob(loc, spec.ablation, spec.seed, role, k, testbed.key),
                                 metric, base, behavior_sign(claim)) for role, k, loc in others]
    return {"necessity": necessity, "minus": [o for o in done if o.job.role == "minus"],
            "sizes": [o for o in done if o.job.role == "size"]}


def behavior_sign(claim) -> int:
    """+1 when the behaviour is the pairs' chosen answers, -1 when it is their rejected ones."""
    return 1 if claim.necessity_behavior == "chosen" else -1
