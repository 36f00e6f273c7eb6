"""Orchestration: claim -> testbed -> heuristic -> location and null -> jobs -> verdict -> report.
The CLI and the pytest plugin are thin layers on `verify`."""
from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from loccheck.claim import Claim, load_claim
from loccheck.errors import ClaimError, LoccheckError
from loccheck.locations import location_size
from loccheck.run.result import VerifyResult, build_result


CHECKING = "checking the claim's inputs (data, model files, folders)"


def verify(claim: Claim | str | Path, *, out_dir: str | Path | None = None, write_report: bool = True,
           overrides: dict[str, Any] | None = None, progress: bool | str | None = None,
           cache_dir: str | Path | None = None, refresh: bool = False, executor="serial",
           write_line=None, inputs=None, model=None, tokenizer=None,
           evidence: str | Path | None = None) -> VerifyResult:
    """Verify a localization claim (a path to a claim file or a loaded `Claim`).

    For each of the claim's edit methods, fits the edit at the claimed location, at the whole
    model (the ceiling) and at `random_locations.n` random locations of the same size, all with
    the same data, order, budget and seed, and compares their gains on the held-out test
    questions. The p-value is one-sided, ``(1 + #{null gains >= claim gain}) / (N + 1)``: ties
    count against the claim. The first edit method's test gives the verdict.

    Every fit is cached under a hash of everything that determines it (model, data, split,
    location, edit settings, loccheck version), with its parameters, and every score per (fit,
    metric): an unchanged claim re-runs without fitting anything, a larger null fits only the
    new draws, and an added metric scores the stored edits. `refresh=True` refits everything.
    `executor` is "serial" or an `Executor`; `progress` is None (a bar on a terminal, plain
    lines elsewhere), True, False, or a mode ("bar", "lines", "off"); `write_line` receives the
    plain lines (default: stderr). `inputs` is what `inspect` returned for this claim (it is
    inspected here otherwise).

    `model` and `tokenizer`: a causal LM the caller has already loaded, and its tokenizer, used
    instead of loading the claim's model. The model runs as it is, on its own device and in its
    own dtype (the claim's model.device, model.dtype, model.revision and
    model.trust_remote_code do not apply, and model.name is only the run's label: nothing is
    opened under it). Its fits are cached under a sha256 of its state dict, config and tokenizer
    (computed once per call), so only exactly the same weights are served from the cache. It is
    given back as it came, also when verification fails: loccheck never writes a weight, and
    every parameter's requires_grad, every module's training flag and hooks are restored. A
    model loccheck cannot read (meta tensors, accelerate offloading, quantised weights, several
    devices) or run (flash attention: load it with attn_implementation="sdpa" or "eager") is a
    one-line `LoccheckError`; the Ray executor, whose workers load the model themselves, is
    refused. The report and result.json say the model was passed in.

    `evidence`: a folder to write the run's evidence bundle to (`run.bundle`), which
    `run.replay.replay` re-derives the verdict from without a model.
    """
    claim = claim if isinstance(claim, Claim) else load_claim(claim)
    if overrides:
        claim = claim.with_overrides(overrides)
    with passed_in(claim, model, tokenizer, executor, inputs) as given:
        return _verify(claim, out_dir=out_dir, write_report=write_report, progress=progress,
                       cache_dir=cache_dir, refresh=refresh, executor=executor, write_line=write_line,
                       inputs=inputs, given=given, evidence=evidence)


@contextlib.contextmanager
def passed_in(claim: Claim, model, tokenizer, executor="serial", inputs=None):
    """The passed-in model, checked (`models.given.GivenModel`; None when none was passed),
    held as `left_as_found` holds it while the block runs."""
    from loccheck.models.given import GivenModel, given_model, left_as_found

    if model is None:
        if tokenizer is not None:
            raise ValueError("`tokenizer` was given without `model`; pass both, or neither to load the "
                             "claim's model.name")
        yield None
        return
    if getattr(executor, "name", executor) == "ray":
        raise LoccheckError("a passed-in model cannot run on Ray: each Ray worker loads the model itself "
                            "from the claim's model.name; use executor='serial', or save the model "
                            "(save_pretrained) and name its folder in the claim", key="executor")
    if inputs is not None and not (isinstance(inputs.source, GivenModel) and inputs.source.model is model):
        raise ValueError("`inputs` were inspected for another model than `model`; inspect with "
                         "the same model, or leave `inputs` out")
    with left_as_found(model):
        given = inputs.source if inputs is not None else given_model(model, tokenizer, claim.model.name)
        given.adapter()                    # the architecture and its checks, before any data work
        yield given


def _verify(claim: Claim, *, out_dir, write_report, progress, cache_dir, refresh, executor, write_line,
            inputs, given, evidence) -> VerifyResult:
    from loccheck.run.testbed import prepare_testbed
    from loccheck.cache import FitCache, cache_root as resolve_cache
    from loccheck.run.executors import get_executor
    from loccheck.run.jobs import JobRunner, unedited_scores

    from loccheck.progress import Phases, progress_mode

    out = Path(out_dir) if out_dir is not None else Path("reports") / claim.name
    phase = Phases(progress_mode(progress), write_line, title=f"{claim.name} ")
    if inputs is None:
        with phase(CHECKING, announce=False):
            inputs = inspect(claim, out_dir=out if write_report else None, cache_dir=cache_dir, given=given,
                             evidence=evidence)
    executor = get_executor(executor)
    cache_root = resolve_cache(cache_dir)     # local folder (absolute: workers resolve it the same), store
    cache = FitCache(cache_root, refresh=refresh)
    what = (f"loading the model ({claim.model.name}, {claim.model.dtype}) and" if given is None else
            f"hashing the passed-in model ({given.facts}) and loading")
    with phase(f"{what} the {claim.behavior.dataset} pairs"):
        testbed = prepare_testbed(claim, cache_root, inputs)
    from loccheck.heuristics import HEURISTICS

    ranks = HEURISTICS[claim.heuristic.method].run is not None   # `manual` runs nothing: no phase line
    stability, stability_s = None, None
    with _reading_once(claim):
        with (phase(f"running the heuristic ({claim.heuristic.method}) on the {len(testbed.train)} train and "
                    f"{len(testbed.validation)} validation pairs") if ranks else contextlib.nullcontext()):
            proposal = _propose(claim, testbed)                 # the heuristic: no test questions
        location = claimed_location(claim, testbed, proposal)
        if claim.stability.bootstrap:
            from loccheck.run.stability import heuristic_stability

            began = time.monotonic()
            with phase(f"rerunning the heuristic ({claim.heuristic.method}) on {claim.stability.bootstrap} "
                       f"bootstrap resamples of the {len(testbed.data.groups['train'])} train questions "
                       "(claim stability)"):
                stability = heuristic_stability(claim, testbed, location, proposal, phase.note)
            stability_s = time.monotonic() - began
    nulls = _draw_null(claim, testbed, location)
    metrics = claim.all_metrics
    with phase(f"scoring the unedited model on the {len(testbed.test)} test pairs ({', '.join(metrics)})"):
        base = unedited_scores(testbed, cache, metrics)
    extra = extra_locations(claim, testbed, location)
    ablations = None
    if "necessity" in claim.tests:                      # ablations train nothing: before the fits
        from loccheck.run.ablations import run_ablations

        ablations = run_ablations(claim, testbed, cache, location, base[claim.verdict.metric], phase,
                                  nulls=_draw_null(claim, testbed, location, n=claim.necessity.n, key="necessity.n"),
                                  minus=extra["minus"], sizes=extra["sizes"])
    jobs = edit_jobs(claim, testbed.key, location, nulls, ceiling_location(location, testbed.adapter), **extra)
    fits = _progress(claim, len(jobs), progress, base, write_line)
    # a worker elsewhere builds its own testbed from the claim; a heuristic's subspace goes with it
    proposed = testbed.residual.bases if claim.location.from_heuristic else None
    factory = (partial(prepare_testbed, claim, cache_root, bases=proposed) if given is None
               else _given_model_elsewhere)
    runner = JobRunner(testbed, cache, metrics, testbed_factory=factory, on_step=fits.on_step)
    outcomes = _run(claim, jobs, runner, executor, base, fits)
    result = build_result(claim, testbed, location, proposal, nulls, base, outcomes, executor.name, ablations,
                          executor.width, stability=stability)
    if evidence is not None:
        from loccheck.run.bundle import write_bundle

        with phase(f"writing the evidence bundle to {evidence}"):
            write_bundle(claim, result, evidence)
    if not write_report:
        return result
    from loccheck.files import write_json_atomic
    from loccheck.report import render_report

    with phase(f"writing the report to {out}"):
        render_report(result.payload, out)
        # What this run spent (not in result.json or report.md, which stay reproducible byte for byte)
        write_json_atomic({**run_costs(outcomes), **({"claim_stability_s": round(stability_s, 1)}
                                                     if stability_s is not None else {})}, out / "timings.json")
        write_json_atomic(result.payload, out / "result.json")   # last: its presence means a complete report
    return replace(result, report_dir=str(out))


def _given_model_elsewhere():
    """The testbed factory of a run on a passed-in model: that model exists in this process only."""
    raise LoccheckError("a passed-in model exists only in the process it was passed to: an executor "
                        "that fits elsewhere cannot rebuild it; use executor='serial', or save the model "
                        "and name its folder in the claim", key="executor")


def run_costs(outcomes) -> dict:
    """Seconds this run spent: fitting (per role) and scoring (per metric; 0 when cached)."""
    from loccheck.run.jobs import every_run

    fitting: dict[str, float] = {}
    scoring: dict[str, float] = {}
    outcomes = every_run(outcomes)
    for o in outcomes:
        if o.fitted:
            fitting[o.job.role] = fitting.get(o.job.role, 0.0) + o.seconds - sum(o.score_seconds.values())
        for m, seconds in o.score_seconds.items():
            scoring[m] = scoring.get(m, 0.0) + seconds
    return {"fitting_seconds": fitting, "scoring_seconds": scoring,
            "n_fitted": sum(o.fitted for o in outcomes), "n_scored": sum(o.n_scored for o in outcomes)}


def inspect(claim: Claim, *, out_dir: str | Path | None, cache_dir: str | Path | None = None, given=None,
            evidence: str | Path | None = None):
    """Every check that can be made before fitting: the cache and report folders can be
    written, the data loads, the model's files are sound, the location lies inside the model,
    the prompts fit its context. Returns the `inspect.ClaimInputs` that `verify` takes. Every
    error names the claim file (a folder that cannot be written is this claim's problem too),
    for the CLI and the plugin alike. `given`: a passed-in model (`passed_in`), checked
    instead of the claim's model.name."""
    from loccheck.run.inspect import inspect_claim
    from loccheck.cache import cache_root as resolve_cache, check_store
    from loccheck.errors import ClaimError
    from loccheck.files import check_writable_folder

    try:
        cache_root = resolve_cache(cache_dir)
        check_writable_folder(cache_root.local, "cache folder")
        check_store(cache_root)          # a shared store's URL: reached and written within seconds
        inputs = inspect_claim(claim, cache_root, given)
        if out_dir is not None:
            check_writable_folder(out_dir, "report folder")
        if evidence is not None:
            check_writable_folder(Path(evidence).parent, "evidence folder")
    except ClaimError:
        raise
    except LoccheckError as err:
        if claim.path is None:
            raise
        raise ClaimError(claim.path, None, None, err.key or "", err.msg) from None
    return inputs


def claimed_location(claim: Claim, testbed, proposal) -> tuple:
    """The location on trial: the heuristic's top k, a subspace read from its file, or the
    claim's sites."""
    if claim.location.from_heuristic:
        location = proposal.top(claim.heuristic.top_k)
        if location[0].kind == "subspace":            # its basis, exactly as from the file localize writes
            _register_basis(testbed, location[0], proposal.raw.basis_of(location[0]))
        return location
    if testbed.residual.location:
        return testbed.residual.location
    return claim.location.parsed


def _register_basis(testbed, site, vectors) -> None:
    """A heuristic's subspace, orthonormalised as `read_basis` does the file `loccheck localize`
    writes of it (float64 survives np.save exactly): a claim that names that file fits the same edit."""
    from loccheck.data.bases import orthonormal_rows

    testbed.residual.bases[site.basis] = orthonormal_rows(vectors, what="the heuristic's basis", field="heuristic")


def ceiling_location(location: tuple, adapter) -> tuple | None:
    """What the ceiling edits: every site of the location's kind (None), or for a location in
    the residual stream after a layer, that whole stream: the same edit with the identity for a
    basis, in whose family every subspace of that layer lies."""
    from loccheck.locations import RESIDUAL_KINDS, SubspaceLoc

    if location[0].kind not in RESIDUAL_KINDS:
        return None
    return (SubspaceLoc(location[0].layer, adapter.model_width, "identity"),)


def edit_jobs(claim: Claim, testbed_key: str, location: tuple, nulls: list[tuple],
              ceiling: tuple | None = None, without: tuple | None = None, minus: list[tuple] = (),
              sizes: list[tuple] = ()) -> list:
    """Per edit method, in claim order: the claim, the ceiling (`ceiling_location`), then the
    null's draws in order. For the first method, after the ceiling the whole model `without`
    the claim (`tests: [..., without]`), and after the null the claim without each of its sites
    (`minus`, minimality) and the size curve's draws (`sizes`)."""
    from loccheck.edits import EDIT_METHODS
    from loccheck.run.jobs import Job

    jobs = []
    for i, section in enumerate(claim.edits):
        kind = location[0].kind
        local, whole = (role_settings(claim, i, role, kind) for role in ("claim", "ceiling"))
        jobs += [Job(section.method, local, location, "claim", None, testbed_key),
                 Job(section.method, whole, ceiling, "ceiling", None, testbed_key)]
        if ceiling is not None and "head" in EDIT_METHODS[section.method].site_kinds:
            # a layer's stream is the verdict's ceiling; the whole model's edit (every head, the
            # head claims' ceiling) is fitted beside it and reported
            jobs.append(Job(section.method, role_settings(claim, i, "whole_model", kind), None, "whole_model",
                            None, testbed_key))
        if i == 0 and without is not None:
            jobs.append(Job(section.method, whole, without, "without", None, testbed_key))
        jobs += [Job(section.method, local, loc, "random", i, testbed_key) for i, loc in enumerate(nulls)]
        if i == 0:
            jobs += [Job(section.method, local, loc, "minus", k, testbed_key) for k, loc in enumerate(minus)]
            jobs += [Job(section.method, local, loc, "size", k % claim.size_curve.n, testbed_key,
                         size=location_size(loc)) for k, loc in enumerate(sizes)]
    return jobs


WHOLE_MODEL_ROLES = ("ceiling", "without", "whole_model")   # fitted with the ceiling's settings


def role_settings(claim: Claim, i: int, role: str, kind: str):
    """The settings `claim.edits[i]` fits a job of `role` with, at a location of site `kind`:
    the ceiling's for the whole-model edits (`whole_model`, every head, as a head claim's
    ceiling), the claim's for the claim and every random, minimality or size-curve location."""
    from loccheck.run.inspect import edit_settings

    return edit_settings(claim, claim.edits[i], i, site_kind="head" if role == "whole_model" else kind,
                         ceiling=role in WHOLE_MODEL_ROLES)


def extra_locations(claim: Claim, testbed, location: tuple) -> dict:
    """The locations the claim's other tests fit or ablate: the whole model `without` the claim,
    the claim without each of its sites (`minus`), and the size curve's random locations (`sizes`,
    `size_curve.n` per size, in size order; drawn as the null is, from its seed, so at the
    claim's size they are the null's first draws)."""
    from loccheck.locations import SubspaceLoc

    out: dict = {"without": None, "minus": [], "sizes": []}
    kind = location[0].kind
    if "without" in claim.tests:
        width = testbed.adapter.model_width
        if kind == "subspace":
            out["without"] = (SubspaceLoc(location[0].layer, width - location[0].dim, f"without:{location[0].basis}"),)
        elif kind == "latent":
            out["without"] = (SubspaceLoc(location[0].layer, width - len(location),
                                          "without:latents:" + ",".join(str(s.latent) for s in location)),)
        else:
            out["without"] = tuple(s for s in testbed.sites(kind) if s not in set(location))
    if "minimality" in claim.tests:
        out["minus"] = [location[:i] + location[i + 1:] for i in range(len(location))]
    if claim.size_curve is not None:
        for size in claim.size_curve.sizes:
            out["sizes"] += _draw_null(claim, testbed, location, n=claim.size_curve.n, size=size,
                                       key="size_curve.sizes")
    return out


HEAD_ROLES = ("claim", "ceiling", "whole_model", "without")   # fitted before the null, in this order


def _run(claim, jobs, runner, executor, base, progress) -> list:
    """The outcomes, in job order. Per edit method: the claim, the ceiling and the other whole-
    model edits (`HEAD_ROLES`), then the null in waves of the executor's width; with
    `random_locations.stop: sequential` a method's null stops at the first wave after which the
    test is decided (`stats.sequential_decided`, on the gains `verdict.compared_gains` defines,
    as the test itself); then minimality's and the size curve's fits. Then, for a method whose
    ceiling is an optimum, the ceiling is continued from any fitted edit of its family that fits
    the training pairs better (`continued_ceiling`)."""
    from loccheck.metrics import METRICS
    from loccheck.stats.pvalues import sequential_decided
    from loccheck.stats.verdict import compared_gains, sequential_h

    rs, vs = claim.random_locations, claim.verdict
    better = METRICS[vs.metric].improvement

    def gain(o):
        return better(o.metrics[vs.metric] - base[vs.metric])
    outcomes = []
    try:
        for method in dict.fromkeys(j.method for j in jobs):
            mine = [j for j in jobs if j.method == method]
            head = [j for j in mine if j.role in HEAD_ROLES]
            null_jobs = [j for j in mine if j.role == "random"]
            n, h = len(null_jobs), sequential_h(rs.stop, len(null_jobs), vs.alpha)
            head_outcomes = _fit(head, runner, executor, progress)
            fitted = []
            for start in range(0, len(null_jobs), executor.width):
                fitted += _fit(null_jobs[start:start + executor.width], runner, executor, progress)
                claim_gain, null = compared_gains(gain(head_outcomes[0]), [gain(o) for o in fitted],
                                                  claim_diverged=head_outcomes[0].diverged,
                                                  null_diverged=[o.diverged for o in fitted])
                if h is not None and sequential_decided(claim_gain, null, n_max=n, h=h):
                    break
            if len(fitted) < n:
                progress.note(f"{method}: the null is decided after {len(fitted)} of {n} random "
                              f"locations ({h} edit as well as the claim); {n - len(fitted)} not fitted")
            tail = _fit([j for j in mine if j.role in ("minus", "size")], runner, executor, progress)
            family = [o for o in head_outcomes[2:] if o.job.role == "without"]   # "whole_model" is another form
            ceiling = continued_ceiling(head_outcomes[1], [head_outcomes[0], *family, *fitted, *tail], runner,
                                        executor, progress)
            outcomes += [head_outcomes[0], ceiling, *head_outcomes[2:], *fitted, *tail]
    finally:
        progress.close()
    return outcomes


def continued_ceiling(ceiling, edits, runner, executor, progress):
    """The ceiling is the optimum of the whole-model edit, and every location's edit lies in its
    family, so its training objective can be no worse than any location's. When a fitted edit's
    objective is lower than the ceiling's by more than the convergence rule can resolve (tol of
    the attainable improvement), the ceiling is fitted again starting from that edit's
    parameters (the best such edit), by the same rule; its record says what was done
    (`continued_from`, `first_fit`). Returns the ceiling's outcome to use."""
    from dataclasses import replace as replace_
    from loccheck.edits import EDIT_METHODS
    from loccheck.edits.training import objective_optimum

    job = ceiling.job
    if not EDIT_METHODS[job.method].continues_ceiling or ceiling.diverged:
        return ceiling
    usable = [o for o in edits if not o.diverged and _objective(o) is not None]
    if not usable or _objective(ceiling) is None:
        return ceiling
    best = min(usable, key=_objective)
    train = job.settings.train
    span = ceiling.info["initial_objective"] - objective_optimum(train.objective)
    if not _objective(best) < _objective(ceiling) - train.convergence_tol * span:
        return ceiling
    progress.note(f"{job.method}: {best.job.label} fits the training pairs better than the whole-model "
                  f"edit (objective {_objective(best):.4g} against {_objective(ceiling):.4g}): the "
                  "whole-model edit is continued from it")
    again = replace_(job, continued_from=best.job.key, start=(best.job.settings, best.job.location, best.state))
    progress.more(1)
    (outcome,) = _fit([again], runner, executor, progress)
    first = {k: ceiling.info.get(k) for k in ("final_objective", "epochs", "stopped", "converged")}
    info = {**outcome.info, "first_fit": {**first, "metrics": ceiling.metrics},
            "continued_from": {"role": best.job.role, "index": best.job.index,
                               "location": best.job.location_text, "final_objective": _objective(best)}}
    return replace_(outcome, info=info, superseded=(ceiling,))


def _objective(outcome) -> float | None:
    import math

    value = outcome.info.get("final_objective")
    return value if isinstance(value, float) and math.isfinite(value) else None


def _fit(jobs, runner, executor, progress) -> list:
    done = [None] * len(jobs)
    for i, outcome in executor.imap(runner, jobs):
        done[i] = outcome
        progress.finished(outcome)
    return done


def _progress(claim, n_jobs, progress, base, write_line):
    from loccheck.progress import Progress, progress_mode

    return Progress(n_jobs, progress_mode(progress), metric=claim.verdict.metric,
                    base=base[claim.verdict.metric], write=write_line, title=f"{claim.name} ")


def _reading_once(claim: Claim):
    """Around the heuristic and its bootstrap resamples: activations read for the heuristic are
    reused by the resamples, which only repeat its questions (nothing to reuse without them)."""
    from loccheck.models.activations import reusing_activations

    return reusing_activations() if claim.stability.bootstrap else contextlib.nullcontext()


def _propose(claim: Claim, testbed):
    """The claim's heuristic on the data without its test split (None for `manual`)."""
    from loccheck.heuristics import HEURISTICS

    try:
        return HEURISTICS[claim.heuristic.method].propose(
            claim.heuristic, testbed.loaded, testbed.data.without_test(testbed.prompt_format, testbed.system_prompt),
            testbed.cache_root,
            seed=claim.behavior.split.seed)
    except ClaimError:
        raise
    except LoccheckError as err:       # a heuristic knows its field, not the claim's file
        raise claim.error(err.key or "heuristic", err.msg) from None


def _draw_null(claim: Claim, testbed, location: tuple, n: int | None = None, size: int | None = None,
               key: str = "random_locations") -> list[tuple]:
    """The null's `n` draws (default random_locations.n) of the claim's size, or of `size`
    (the size curve: not matched to the claim's layers)."""
    from loccheck.locations import SubspaceLoc
    from loccheck.stats.null import every_other_location, sample_null_locations, sample_null_subspaces

    rs = claim.random_locations
    if claim.null_draw == "every" and size is None:     # no draw: every other location, once
        try:
            return every_other_location(testbed.sites(claim.site_kind), location, seed=rs.seed,
                                        match_layers=rs.match_layers)
        except LoccheckError as err:
            raise claim.error("random_locations.draw", err.msg) from None
    n = rs.n if n is None else n
    if claim.null_draw == "haar":
        dim = location_size(location) if size is None else size
        return sample_null_subspaces(SubspaceLoc(location[0].layer, dim, ""), n=n, seed=rs.seed)
    matched = location if rs.match_layers and size is None else None
    try:
        return sample_null_locations(testbed.sites(claim.site_kind), size=len(location) if size is None else size,
                                     n=n, seed=rs.seed, match_layers_of=matched)
    except LoccheckError as err:
        raise claim.error(key, err.msg) from None


def propose_location(claim: Claim | str | Path, *, top_k: int | None = None,
                     cache_dir: str | Path | None = None, model=None, tokenizer=None):
    """Run the claim's heuristic: (the top-k sites, {site: score}, the Proposal). k from
    `top_k`, else heuristic.top_k, else the number of claimed sites. The heuristic sees the
    train and validation questions only. `model` and `tokenizer`: an already loaded model, used
    as it is and given back as it came, as `verify` takes them (model.name is then a label)."""
    from loccheck.run.testbed import prepare_testbed
    from loccheck.cache import cache_root as resolve_cache
    from loccheck.heuristics import HEURISTICS

    claim = claim if isinstance(claim, Claim) else load_claim(claim)
    if HEURISTICS[claim.heuristic.method].run is None:   # checked before the model is loaded
        ranking = ", ".join(n for n, h in HEURISTICS.items() if h.run is not None)
        raise claim.error("heuristic.method", f"heuristic {claim.heuristic.method!r} ranks no sites, so "
                          f"there is nothing to localize; use a heuristic that does ({ranking})")
    if top_k is not None and top_k < 1:
        raise LoccheckError(f"top_k must be at least 1, got {top_k}", key="top_k")
    k = top_k if top_k is not None else getattr(claim.heuristic, "top_k", None) or len(claim.location.sites)
    if claim.site_kind == "subspace" and k != claim.heuristic.top_k:    # top_k is what it fits: the dimension
        claim = claim.with_overrides({"heuristic.top_k": k})
    with passed_in(claim, model, tokenizer) as given:
        testbed = prepare_testbed(claim, resolve_cache(cache_dir), given=given)
        n_sites = (testbed.adapter.model_width if claim.site_kind == "subspace"    # k: its dimension
                   else len(testbed.sites(claim.site_kind)))
        if not 1 <= k < n_sites:
            raise claim.error("heuristic.top_k", f"top_k must be between 1 and {n_sites - 1} for this "
                              f"model, got {k}")
        proposal = _propose(claim, testbed)
    if claim.site_kind != "subspace" and k > len(proposal.ranked):
        raise claim.error("heuristic.top_k", f"top_k must be at most {len(proposal.ranked)}, the sites the "
                          f"heuristic ranks, got {k}")
    sites = proposal.top(k)
    return sites, {str(s): proposal.score(s) for s in sites}, proposal


localize = propose_location     # loccheck.localize: the Python side of `loccheck localize`


def claim_stability(claim: Claim, *, cache_dir: str | Path | None = None, note=None) -> dict:
    """`run.stability.heuristic_stability` on its own (`loccheck stability --bootstrap`): the
    model and data loaded, the claimed location found as `verify` finds it, nothing fitted."""
    from loccheck.cache import cache_root as resolve_cache
    from loccheck.run.stability import heuristic_stability, stability_summary
    from loccheck.run.testbed import prepare_testbed

    testbed = prepare_testbed(claim, resolve_cache(cache_dir))
    with _reading_once(claim):
        proposal = _propose(claim, testbed)
        raw = heuristic_stability(claim, testbed, claimed_location(claim, testbed, proposal), proposal, note)
    return {**raw, **stability_summary(raw)}
