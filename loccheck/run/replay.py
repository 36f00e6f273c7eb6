"""Replay and audit of an evidence bundle (`run.bundle`).

`replay` re-derives every statistic and the verdict from a bundle, with no model and no torch:
it first proves the bundle is the claim's (every field that changes a number, the data file's
sha256, the numerics that made the fits), that it is whole (the manifest's checksums, a fit
file for every record) and that the null stopped where the sequential rule says; then
`result.derive_payload` computes p-values, ratios, the verdict and `expect` exactly as verify
does, and the report is rendered again. Missing evidence fails: replay never fits.

`audit` refits `k` of the bundle's edits, chosen by a seed taken from the manifest (so not by
the bundle's author), on whatever hardware is here, and compares their gains with the
recorded ones within `AUDIT_RTOL`.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from pathlib import Path

from loccheck.files import strict_json
from loccheck.run.bundle import Bundle, BundleError, read_bundle

# Fields of a claim that change no number: its prose, what it expects (replay checks the
# expectation of the claim file as it is now), where the model ran, the heuristic's citation,
# and where its evidence lives.
NOT_NUMBERS = ("claim", "expect", "model.device", "heuristic.citation", "heuristic.notes", "evidence")

# A refitted gain agrees with the recorded one when they differ by at most this share of the
# larger of the two (or of 5% of the ceiling's gain, for gains near zero): the tolerance
# tests/run/test_gpu.py allows between a CPU and a CUDA fit.
AUDIT_RTOL = 0.02
AUDIT_FLOOR = 0.05


def replay(claim, folder: str | Path, *, out_dir: str | Path | None = None, write_report: bool = True):
    """The claim's `VerifyResult` derived from its bundle at `folder` (the evidence option's
    DIR/<claim name>, or the claim's evidence.bundle), its report written to `out_dir` (default
    reports/<claim name>)."""
    from loccheck.run.result import VerifyResult, derive_payload

    bundle = read_bundle(folder)
    with _unreadable(bundle):
        check_bundle(claim, bundle)
        result = VerifyResult(derive_payload(claim, bundle.facts), facts=bundle.facts)
    if not write_report:
        return result
    return write_replayed(result, Path(out_dir) if out_dir is not None else Path("reports") / claim.name)


def write_replayed(result, out: Path):
    """A replayed result's report.md, figures and result.json in `out`; the result, saying where."""
    from loccheck.files import write_json_atomic
    from loccheck.report import render_report

    render_report(result.payload, out)
    write_json_atomic(result.payload, out / "result.json")      # last: its presence means a complete report
    return replace(result, report_dir=str(out))


@contextlib.contextmanager
def _unreadable(bundle: Bundle):
    """A bundle whose checksums hold but whose records are not what loccheck writes (a field
    missing, of another type) is one line, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise BundleError(f"{bundle.folder}: its records are not what loccheck writes "
                          f"({type(err).__name__}: {str(err)[:120]})") from None


def check_bundle(claim, bundle: Bundle) -> None:
    """Every reason the bundle's numbers are not this claim's, as a one-line error."""
    where = bundle.folder
    if bundle.manifest.get("claim_name") != claim.name:
        raise BundleError(f"{where}: the evidence of claim {bundle.manifest.get('claim_name')!r}, not of "
                          f"{claim.name!r}")
    _check_fields(claim, bundle)
    _check_numerics(claim, bundle)
    _check_data(claim, bundle)
    _check_fits(bundle)
    _check_stops(claim, bundle)


def _check_fields(claim, bundle: Bundle) -> None:
    here, there = _flat(claim.effective_config()), _flat(bundle.claim)
    for key in sorted(set(here) | set(there), key=lambda k: (k not in here, k)):
        if any(key == f or key.startswith(f + ".") or key.startswith(f + "[") for f in NOT_NUMBERS):
            continue
        if here.get(key, "(absent)") != there.get(key, "(absent)"):
            raise claim.error(key if key in here else key.rsplit(".", 1)[0],
                              f"is {_short(here.get(key, '(absent)'))} here but "
                              f"{_short(there.get(key, '(absent)'))} in the evidence bundle {bundle.folder}, "
                              "whose numbers were computed under that value; record the bundle again "
                              "(`loccheck verify CLAIM --evidence DIR`)")


def _flat(config, prefix: str = "") -> dict:
    """A nested config as {"edits[0].learning_rate": 0.01, ...}: the claim's own key spelling."""
    if isinstance(config, dict) and config:
        return {k: v for name, value in config.items()
                for k, v in _flat(value, f"{prefix}.{name}" if prefix else name).items()}
    if isinstance(config, list) and config and prefix not in ("location.sites", "metrics", "tests"):
        return {k: v for i, value in enumerate(config) for k, v in _flat(value, f"{prefix}[{i}]").items()}
    return {prefix: config}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_numerics(claim, bundle: Bundle) -> None:
    """The bundle's fits stand for what this loccheck would compute only if every component
    that made them still computes the same numbers (`loccheck.numerics`). A component the claim
    does not use (another edit method's) may have changed."""
    from loccheck.numerics import NUMERICS

    recorded = bundle.manifest["created_with"].get("numerics") or {}
    changed = sorted(c for c in used_components(claim) if recorded.get(c) != NUMERICS.get(c))
    if changed:
        c = changed[0]
        raise BundleError(f"{bundle.folder}: recorded with {c} numerics version {recorded.get(c)}, but this "
                          f"loccheck computes version {NUMERICS.get(c)}: its fits are not what this loccheck "
                          "would fit; record the bundle again with this loccheck, or install the loccheck "
                          f"that recorded it ({bundle.manifest['created_with'].get('loccheck')})")


def used_components(claim) -> list[str]:
    """The `loccheck.numerics` components whose numbers a claim's evidence holds: the testbed's,
    its edit methods', its metrics' (and the judges' for generated answers), the ablations' when
    necessity is tested, and its heuristic's when that caches numbers."""
    from loccheck.metrics import METRICS
    from loccheck.numerics import NUMERICS, TESTBED, versions

    names = [*TESTBED, *(f"edits.{e.method}" for e in claim.edits), *(f"metrics.{m}" for m in claim.all_metrics),
             *(["ablations"] if "necessity" in claim.tests else []),
             *(["judges"] if any(METRICS[m].needs == "generations" for m in claim.all_metrics) else []),
             *([h] if (h := f"heuristics.{claim.heuristic.method}") in NUMERICS else []),
             *(["activations"] if claim.heuristic.method == "probe" else [])]
    return sorted(versions(*(n for n in names if n in NUMERICS)))


def _check_data(claim, bundle: Bundle) -> None:
    from loccheck.run.inspect import load_claim_data

    data = load_claim_data(claim)          # reads and hashes the file; no model
    recorded = bundle.facts["data"]["sha256"]
    if data.sha256 != recorded:
        raise claim.error("behavior.path" if claim.behavior.path else "behavior.dataset",
                          f"the data file {data.source} has sha256 {data.sha256[:16]}..., but the evidence "
                          f"bundle {bundle.folder} was recorded on data with sha256 {recorded[:16]}...")


def _check_fits(bundle: Bundle) -> None:
    """Every edit the result rests on has its fit file, with the same scores."""
    fits = {(f["job"]["method"], f["job"]["role"], f["job"]["index"], tuple(_listed(f["job"]["location"]))): f
            for f in bundle.fits}
    for r in bundle.facts["edits"]:
        where = (r["method"], r["role"], r["index"], tuple(_listed(r["location"])))
        fit = fits.get(where)
        if fit is None:
            raise BundleError(f"{bundle.folder}: the fit of the {r['role']} edit{_index(r)} ({r['method']}) is "
                              "missing from fits/: missing evidence is never refitted in replay")
        if strict_json(fit["metrics"]) != strict_json(r["metrics"]):
            raise BundleError(f"{bundle.folder}: the {r['role']} edit{_index(r)}'s scores in its fit file "
                              "differ from facts.json's")


def _index(record: dict) -> str:
    return "" if record["index"] is None else f" {record['index']}"


def _listed(location) -> list:
    return [location] if isinstance(location, str) else list(location)


def _check_stops(claim, bundle: Bundle) -> None:
    """Each null holds exactly the draws its stopping rule fitted: all of them, or, under
    `stop: sequential`, up to the first wave (of the executor's width) after which the test was
    decided, and no further."""
    from loccheck.metrics import METRICS
    from loccheck.run.result import dropped
    from loccheck.stats.verdict import compared_gains

    facts, vs = bundle.facts, claim.verdict
    n_locations = facts.get("n_locations")
    if claim.null_draw == "every" and not (isinstance(n_locations, int) and n_locations >= 2):
        raise BundleError(f"{bundle.folder}: facts.json's n_locations is {n_locations!r}, but a null of every other "
                          "location needs the number of locations (an integer of at least 2)")
    better = METRICS[vs.metric].improvement
    base = _number(facts["base_metrics"][vs.metric])
    for method in dict.fromkeys(e.method for e in claim.edits):
        mine = [r for r in facts["edits"] if r["method"] == method]
        head = next((r for r in mine if r["role"] == "claim"), None)
        if head is None:
            raise BundleError(f"{bundle.folder}: holds no claim edit of {method}")
        null = [r for r in mine if r["role"] == "random"]
        _check_order(bundle, f"{method}'s null", null)
        claim_gain, gains = compared_gains(better(_number(head["metrics"][vs.metric]) - base),
                                           [better(_number(r["metrics"][vs.metric]) - base) for r in null],
                                           claim_diverged=head["diverged"],
                                           null_diverged=[r["diverged"] for r in null])
        _check_stop(bundle, f"the {method} null", claim_gain, gains, claim.null_size("editing", n_locations),
                    claim.random_locations.stop, vs.alpha, int(facts.get("executor_width") or 1))
    ablations = dropped(claim, facts.get("ablations"), {vs.metric: base})
    if ("necessity" in claim.tests) != (ablations is not None):
        raise BundleError(f"{bundle.folder}: the necessity test is {'' if ablations else 'not '}in the bundle "
                          f"but {'' if 'necessity' in claim.tests else 'not '}in the claim's tests")
    if ablations:
        first, *null = ablations["necessity"]
        _check_order(bundle, "the necessity null", null)
        claim_drop, drops = compared_gains(_number(first["drop"]), [_number(r["drop"]) for r in null])
        _check_stop(bundle, "the necessity null", claim_drop, drops, claim.null_size("necessity", n_locations),
                    claim.necessity.stop, vs.alpha, 1)


def _check_order(bundle: Bundle, what: str, records: list[dict]) -> None:
    if [r["index"] for r in records] != list(range(len(records))):
        raise BundleError(f"{bundle.folder}: {what}'s draws are not the first {len(records)} in draw order "
                          "(a draw is missing or repeated)")


def _check_stop(bundle: Bundle, what: str, claim_stat: float, null: list[float], n: int, stop: str,
                alpha: float, width: int) -> None:
    """`null` holds what a null of `n` draws fitted with `stop`: every draw, or, sequentially,
    draws in waves of `width` up to the first wave after which the test is decided, as
    `verify._run` fits them."""
    from loccheck.stats.pvalues import sequential_decided
    from loccheck.stats.verdict import sequential_h

    k = len(null)
    h = sequential_h(stop, n, alpha)
    if h is None:
        if k != n:
            raise BundleError(f"{bundle.folder}: {what} holds {k} draws; the claim's null has {n} "
                              "(missing evidence is never refitted in replay)")
        return
    for end in range(width, k, width):
        if sequential_decided(claim_stat, null[:end], n_max=n, h=h):
            raise BundleError(f"{bundle.folder}: {what} holds {k} draws, but the sequential rule stops after "
                              f"{end}: the bundle is not what the rule fitted")
    if k > n or (k < n and not sequential_decided(claim_stat, null, n_max=n, h=h)):
        raise BundleError(f"{bundle.folder}: {what} holds {k} of {n} draws and is not decided after them: "
                          "the rest is missing evidence, never refitted in replay")


def _number(value) -> float:
    return math.nan if value is None else float(value)


def audit(claim, folder: str | Path, k: int, *, cache_dir: str | Path | None = None, note=print) -> list[dict]:
    """Refit `k` of the bundle's edits (`audit_choice`) on this machine, with nothing served
    from a cache, and compare every metric's gain with the recorded one; the unedited scores
    are compared too. Returns one row per comparison; a gain outside the tolerance is a
    `BundleError` naming the edit, both numbers and the tolerance. Needs the model."""
    import tempfile

    from loccheck.cache import FitCache, cache_root as resolve_cache
    from loccheck.run.jobs import run_job, unedited_scores
    from loccheck.run.testbed import prepare_testbed

    bundle = read_bundle(folder)
    with _unreadable(bundle):
        check_bundle(claim, bundle)
        chosen = audit_choice(bundle, k)
    testbed = prepare_testbed(claim, resolve_cache(cache_dir))
    _check_identity(testbed, bundle)
    metrics, facts = list(claim.all_metrics), bundle.facts
    recorded_base = {m: _number(facts["base_metrics"][m]) for m in metrics}
    ceiling = next(r for r in facts["edits"] if r["role"] == "ceiling")
    scale = AUDIT_FLOOR * abs(_number(ceiling["metrics"][claim.verdict.metric]) - recorded_base[claim.verdict.metric])
    rows = []
    with tempfile.TemporaryDirectory(prefix="loccheck-audit-") as scratch:
        fresh = FitCache(Path(scratch))                   # nothing recorded is served: every number is made here
        base = unedited_scores(testbed, fresh, metrics)
        rows += [_compare("unedited model", m, base[m], recorded_base[m], 0.0) for m in metrics]
        for n, fit in enumerate(chosen, 1):
            job = _job_of(claim, bundle, fit, testbed)
            note(f"audit [{n}/{len(chosen)}]: refitting {job.label} at {_where(job)}")
            outcome = run_job(testbed, fresh, job, metrics, on_step=_every_30_s(note, job.label))
            rows += [_compare(f"{job.label} at {_where(job)}", m, outcome.metrics[m] - base[m],
                              _number(fit["metrics"][m]) - recorded_base[m], scale) for m in metrics]
    bad = next((r for r in rows if not r["agrees"]), None)
    if bad is not None:
        raise BundleError(f"audit of {bundle.folder}: {bad['what']}: {bad['metric']} gain {bad['here']:+.6g} here, "
                          f"{bad['recorded']:+.6g} recorded; tolerance {bad['tolerance']:.3g} ({AUDIT_RTOL:g} of "
                          f"the larger, at least {AUDIT_FLOOR:g} of the ceiling's gain)")
    return rows


def _every_30_s(note, label: str):
    """A fit's `on_step` that says where it is every 30 s: a ceiling's refit takes minutes, and a
    CI log would otherwise show nothing meanwhile."""
    import time

    last = [time.monotonic()]

    def on_step(step: int, n_steps: int, loss: float | None) -> None:    # None: a method that trains no loss (ROME)
        if time.monotonic() - last[0] >= 30:
            last[0] = time.monotonic()
            note(f"audit: {label}: step {step} of at most {n_steps}" + ("" if loss is None else f", loss {loss:.3g}"))
    return on_step


def audit_choice(bundle: Bundle, k: int) -> list[dict]:
    """`k` of the bundle's fits that did not diverge, drawn with `bundle.manifest_seed`."""
    import numpy as np

    from loccheck.run.bundle import manifest_seed

    usable = [f for f in bundle.fits if f["info"].get("stopped") != "diverged"]
    if k > len(usable):
        raise BundleError(f"{bundle.folder}: --audit {k} asks for more edits than the bundle's {len(usable)}")
    picked = np.random.default_rng(manifest_seed(bundle)).choice(len(usable), size=k, replace=False)
    return [usable[i] for i in sorted(picked)]


def _compare(what: str, metric: str, here: float, recorded: float, scale: float) -> dict:
    tolerance = AUDIT_RTOL * max(abs(here), abs(recorded), scale)
    agrees = math.isfinite(here) and math.isfinite(recorded) and abs(here - recorded) <= tolerance
    return {"what": what, "metric": metric, "here": here, "recorded": recorded, "tolerance": tolerance,
            "agrees": bool(agrees or (math.isnan(here) and math.isnan(recorded)))}


def _where(job) -> str:
    text = job.location_text
    return text if isinstance(text, str) else (", ".join(text) if len(text) <= 4 else f"{len(text)} sites")


def _check_identity(testbed, bundle: Bundle) -> None:
    """The model and data here are the bundle's (the device, dtype and kernels may differ: that
    is what the tolerance is for)."""
    recorded = bundle.facts["testbed"]["identity"]
    here = testbed.identity
    for what, a, b in (("model weights", here["model"]["weights"], recorded["model"]["weights"]),
                       ("model commit", here["model"]["commit"], recorded["model"]["commit"]),
                       ("data", here["data"], recorded["data"]),
                       ("basis or dictionary", here.get("residual"), recorded.get("residual"))):
        if a != b:
            raise BundleError(f"audit of {bundle.folder}: the {what} here ({_short(a)}) is not the bundle's "
                              f"({_short(b)}): an audit refits on the model and data the bundle was recorded on")


def _job_of(claim, bundle: Bundle, fit: dict, testbed):
    """The `Job` a fit file records, rebuilt from the claim (its settings must be the recorded
    ones); a continued ceiling starts from the recorded parameters of the edit it continued."""
    from loccheck.locations import parse_location
    from loccheck.run.jobs import Job, decode_state
    from loccheck.run.verify import role_settings

    j = fit["job"]
    at = next(i for i, e in enumerate(claim.edits) if e.method == j["method"])
    settings = role_settings(claim, at, j["role"], parse_location(bundle.facts["location"])[0].kind)
    if strict_json(settings.to_json()) != strict_json(j["settings"]):
        raise BundleError(f"{bundle.folder}: the {j['role']} edit's recorded settings are not the claim's")
    start = None
    if j["continued_from"] is not None:
        origin = next((f for f in bundle.fits if f["job"]["key"] == j["continued_from"]), None)
        if origin is None or "state" not in origin:
            raise BundleError(f"{bundle.folder}: the parameters of the edit the ceiling was continued from are "
                              "not in fits/, so its continuation cannot be refitted")
        start = (_job_of(claim, bundle, origin, testbed).settings, _location(origin["job"]["location"]),
                 decode_state(origin["state"]))
    return Job(j["method"], settings, _location(j["location"]), j["role"], j["index"], testbed.key,
               continued_from=j["continued_from"], size=j["size"], start=start)


def _location(text) -> tuple | None:
    """A recorded location: "all" (the whole model) is None, as in a `Job`."""
    from loccheck.locations import parse_location

    return None if text == "all" else parse_location(text)
