"""Orchestration: claim -> model and data -> optimal edits (claim, whole model, null) -> statistics
-> verdict -> result.json and report. The CLI and the pytest plugin are thin layers on `verify`."""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from loccheck import __version__
from loccheck.claim import Claim, load_claim
from loccheck.errors import DataError, LoccheckError
from loccheck.locations import HeadLoc, format_heads


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of verifying one claim; the fields are those of result.json."""
    verdict: str
    verdict_reason: str
    p_value: float
    n_random: int
    min_p_value: float
    metric: str
    edit_method: str       # the method whose test gives the verdict ("optimal" when both ran)
    alpha: float
    rho: float
    claim_gain: float
    full_gain: float
    null_gains: list[float]
    optimality_ratio: float
    null_mean: float
    null_std: float
    claim_percentile: float
    expect: str | None
    matches_expectation: bool
    claim_name: str
    claim_file: str | None
    claim_text: str
    location: list[str]
    heuristic: dict
    base_metrics: dict
    edits: list[dict]
    methods: dict          # per edit method ("optimal", "iti"): its own p-value, gains, verdict
    probe: dict | None     # probe accuracies when the heuristic is probing
    data: dict
    model: dict
    config: dict
    versions: dict
    seeds: dict
    loccheck_version: str
    report_dir: str | None = None   # where report.md and result.json were written (not in the JSON)
    n_fitted: int | None = None     # edits fitted by this run rather than read from the cache (not in the JSON)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("report_dir", "n_fitted")}


def verify(claim: Claim | str | Path, *, out_dir: str | Path | None = None, write_report: bool = True,
           overrides: dict[str, Any] | None = None, progress: bool | None = None,
           cache_dir: str | Path | None = None, refresh: bool = False) -> VerifyResult:
    """Verify a localization claim (a path to a claim file or a loaded `Claim`).

    Fits the optimal edit at the claimed heads, at the whole model and at
    `random_locations.n` random head sets of the same size, all with the same data, order,
    budget and seed, and compares their gains on the held-out test questions. The p-value is
    one-sided, ``(1 + #{null gains >= claim gain}) / (N + 1)``: ties count against the claim.

    Every fitted edit is cached under a hash of everything that determines it (model weights,
    data, split, location, edit settings, seed, loccheck version): an unchanged claim re-runs
    without fitting anything, and a larger null fits only the new draws. `refresh=True`
    refits everything.
    """
    if not isinstance(claim, Claim):
        claim = load_claim(claim)
    if overrides:
        claim = claim.with_overrides(overrides)
    result = _run(claim, progress=progress, cache_dir=cache_dir, refresh=refresh)
    if not write_report:
        return result
    out = Path(out_dir) if out_dir is not None else Path("reports") / claim.name
    from loccheck.files import write_json_atomic
    from loccheck.report import render_report

    payload = result.to_json()
    render_report(payload, out)
    write_json_atomic(payload, out / "result.json")   # last: its presence means a complete report
    return replace(result, report_dir=str(out))


def _check_location(claim: Claim, adapter) -> None:
    for i, text in enumerate(claim.location.heads):
        loc = HeadLoc.parse(text)
        if loc.layer >= adapter.n_layers or loc.head >= adapter.n_heads:
            raise claim.error(f"location.heads[{i}]", f"{text} is outside the model: it has "
                              f"{adapter.n_layers} layers x {adapter.n_heads} heads (0-based)")
    top_k = claim.heuristic.top_k if claim.location.from_heuristic else None
    size = top_k or len(claim.location.heads)
    if size >= adapter.n_layers * adapter.n_heads:
        key = "heuristic.top_k" if top_k else "location.heads"
        raise claim.error(key, f"the location would be every head of the model ({size}); there is "
                          "no random location of the same size to compare with")


def _prepare(claim: Claim, cache_dir):
    """The claim's data, model and adapter, with the location checked against the model."""
    from loccheck.data import load_behavior
    from loccheck.models import get_adapter
    from loccheck.models.loading import load_model

    ms, bs = claim.model, claim.behavior
    # Data first: a bad data path should fail before a model is loaded.
    try:
        data = load_behavior(dataset=bs.dataset, path=bs.path,
                             base_dir=claim.path.parent if claim.path is not None else None,
                             split=(bs.split.train, bs.split.validation, bs.split.test),
                             split_seed=bs.split.seed, max_questions=bs.max_questions,
                             max_pairs_per_question=bs.max_pairs_per_question)
    except DataError as err:
        raise claim.error("behavior.path" if bs.path else "behavior.dataset", str(err)) from None
    try:
        loaded = load_model(ms.name, revision=ms.revision, device=ms.device, dtype=ms.dtype,
                            trust_remote_code=ms.trust_remote_code, cache=cache_dir)
        adapter = get_adapter(loaded.model)
    except LoccheckError as err:
        # Name the claim file too: the message already names the field and the model.
        key, _, msg = str(err).partition(": ")
        if not key.startswith("model."):
            key, msg = "model.name", str(err)
        raise claim.error(key, msg) from None
    _check_location(claim, adapter)
    return data, loaded, adapter


def localize(claim: Claim | str | Path, *, top_k: int | None = None,
             cache_dir: str | Path | None = None) -> tuple[list[HeadLoc], dict[str, float], object]:
    """Run the claim's probing heuristic: the top-k heads by probe validation accuracy (k from
    `top_k`, else heuristic.top_k, else the number of claimed heads), their accuracies, and the
    full ProbeResult. Probes see the train and validation questions only."""
    from loccheck.cache import cache_dir as resolve_cache

    if not isinstance(claim, Claim):
        claim = load_claim(claim)
    k = top_k or claim.heuristic.top_k or len(claim.location.heads)
    data, loaded, adapter = _prepare(claim, cache_dir)
    if not 1 <= k < adapter.n_layers * adapter.n_heads:
        raise claim.error("heuristic.top_k", f"top_k must be between 1 and "
                          f"{adapter.n_layers * adapter.n_heads - 1} for this model, got {k}")
    probe = _probe(claim, _activations(claim, data, loaded, adapter, resolve_cache(cache_dir)))
    heads = probe.top_k(k)
    return heads, {str(h): probe.accuracy_of(h) for h in heads}, probe


def _methods(claim: Claim) -> list[str]:
    return ["optimal", "iti"] if claim.edit.method == "both" else [claim.edit.method]


def _model_identity(loaded) -> dict:
    info = loaded.info
    return {"weights": info["sha256"] or f"{info['name']}@{info['revision']}",
            "dtype": info["dtype"], "device": info["device"].split(":")[0]}


def _run(claim: Claim, *, progress: bool | None, cache_dir, refresh: bool) -> VerifyResult:
    from loccheck.cache import FitCache, content_key
    from loccheck.cache import cache_dir as resolve_cache
    from loccheck.edits import initial_read_vectors
    from loccheck.fits import Bench, fit_iti, fit_optimal, label
    from loccheck.metrics import METRICS, compute_metrics
    from loccheck.null import sample_null_locations
    from loccheck.progress import Progress
    from loccheck.prompts import format_prompt, resolve_format, tokenize_pairs
    from loccheck.scoring import all_pair_logprobs
    from loccheck.training import EditConfig

    bs, es, rs, vs = claim.behavior, claim.edit, claim.random_locations, claim.verdict
    methods = _methods(claim)
    data, loaded, adapter = _prepare(claim, cache_dir)
    model, tokenizer = loaded.model, loaded.tokenizer

    fmt = resolve_format(tokenizer, bs.prompt_format)
    splits = {name: tokenize_pairs(tokenizer, getattr(data, name), fmt, bs.system_prompt)
              for name in ("train", "validation", "test")}
    needed = ["train", "test"] + (["validation"] if "iti" in methods else [])
    for name in needed:
        if not splits[name]:
            raise DataError(f"{data.source}: the {name} split has no usable preference pairs after "
                            f"tokenization (behavior.max_questions / behavior.split)")

    # The heuristic's evidence (probe accuracies) and ITI's directions come from the activations
    # of the train and validation questions only: the test questions stay unseen.
    probe, directions = None, None
    if claim.heuristic.method == "probe" or "iti" in methods:
        acts = _activations(claim, data, loaded, adapter, resolve_cache(cache_dir))
        if claim.heuristic.method == "probe":
            probe = _probe(claim, acts)
        if "iti" in methods:
            from loccheck.iti import iti_directions
            directions = iti_directions(acts[0], acts[1])
    heads = tuple(probe.top_k(claim.heuristic.top_k)) if claim.location.from_heuristic \
        else claim.location.head_locs

    pad_id = tokenizer.pad_token_id
    cache = FitCache(resolve_cache(cache_dir), refresh=refresh)
    # Everything besides the location and the edit that determines a fitted edit's numbers.
    identity = {"loccheck": __version__, "model": _model_identity(loaded),
                "data": {"sha256": data.sha256, "dataset": bs.dataset,
                         "split": claim.effective_config()["behavior"]["split"],
                         "max_questions": bs.max_questions,
                         "max_pairs_per_question": bs.max_pairs_per_question,
                         "prompt_format": fmt, "system_prompt": bs.system_prompt},
                "metrics": sorted(METRICS)}
    base_key = content_key({**identity, "what": "unedited test metrics"})
    base_metrics = cache.get(base_key)
    if base_metrics is None:
        base_metrics = compute_metrics(all_pair_logprobs(model, splits["test"], pad_id).numpy())
        cache.put(base_key, base_metrics)

    nulls = sample_null_locations(n_layers=adapter.n_layers, n_heads=adapter.n_heads,
                                  size=len(heads), n=rs.n, seed=rs.seed, exclude=heads,
                                  match_layers_of=heads if rs.match_layers else None)
    jobs = [("claim", None, heads), ("full", None, None)] + [("random", i, loc) for i, loc in enumerate(nulls)]
    a_init = initial_read_vectors(adapter, es.seed, es.init_std)
    common = dict(objective=es.objective, tau=es.tau, beta=es.beta, epochs=es.epochs,
                  batch_size=es.batch_size, weight_decay=es.weight_decay,
                  warmup_ratio=es.warmup_ratio, max_steps=es.max_steps, seed=es.seed,
                  convergence_tol=es.convergence_tol)
    configs = {"local": EditConfig(learning_rate=es.learning_rate, **common),
               "full": EditConfig(learning_rate=es.full_model_learning_rate, **common)}

    bar = Progress(len(jobs) * len(methods), enabled=progress)
    bench = Bench(model, adapter, pad_id, splits["train"], splits["validation"], splits["test"],
                  base_metrics, bar)
    records, n_fitted = [], 0
    try:
        for method in methods:
            for role, index, loc in jobs:
                if method == "optimal":
                    cfg = configs["full" if role == "full" else "local"]
                    setup = {**asdict(cfg), "read": es.read, "init_std": es.init_std}
                else:
                    setup = {"alphas": list(es.iti.alphas), "positions": es.iti.positions,
                             "metric": vs.metric}
                key = content_key({**identity, "method": method, "setup": setup,
                                   "location": "all" if loc is None else format_heads(loc)})
                record = cache.get(key)
                if record is None:
                    n_fitted += 1
                    if method == "optimal":
                        record = fit_optimal(bench, role, index, loc, cfg, a_init, es.read, vs.metric)
                    else:
                        record = fit_iti(bench, role, index, loc, directions, es.iti.alphas, vs.metric)
                    # Stored without its role: a random draw equal to another claim's heads reuses it.
                    cache.put(key, {k: v for k, v in record.items() if k not in ("role", "index")})
                else:
                    bar.cached(label(role, index, method), record["gains"][vs.metric])
                records.append({**record, "role": role, "index": index})
    finally:
        bar.close()

    summaries = {m: _summarize([r for r in records if r["method"] == m], vs, len(heads))
                 for m in methods}
    primary = summaries[methods[0]]
    expected = claim.expect or "SUPPORTED"
    example = format_prompt(tokenizer, data.test[0].prompt, fmt, bs.system_prompt)
    return VerifyResult(
        **{k: primary[k] for k in _PRIMARY_FIELDS}, n_random=len(nulls), metric=vs.metric,
        edit_method=methods[0],
        alpha=vs.alpha, rho=vs.rho, expect=claim.expect,
        matches_expectation=primary["verdict"] == expected, claim_name=claim.name,
        claim_file=str(claim.path) if claim.path is not None else None, claim_text=claim.claim,
        location=format_heads(heads), heuristic=claim.effective_config()["heuristic"],
        base_metrics=base_metrics, edits=records, methods=summaries,
        probe=None if probe is None else _probe_record(probe, heads, claim),
        data=_data_record(bs.dataset, data.summary(), fmt, example,
                          {k: len(v) for k, v in splits.items()}),
        model={**loaded.info, **adapter.describe()},
        config=claim.effective_config(), versions=_versions(),
        seeds={"edit": es.seed, "random_locations": rs.seed, "split": bs.split.seed},
        loccheck_version=__version__, n_fitted=n_fitted)


_PRIMARY_FIELDS = ("verdict", "verdict_reason", "p_value", "min_p_value", "claim_gain", "full_gain",
                   "null_gains", "optimality_ratio", "null_mean", "null_std", "claim_percentile")


def _summarize(records: list[dict], vs, size: int) -> dict:
    """The test for one edit method: p-value, verdict and the null's summary."""
    import numpy as np

    from loccheck.fits import count_effective
    from loccheck.stats import null_test
    from loccheck.verdict import decide_verdict

    claim_gain = records[0]["gains"][vs.metric]
    full_gain = records[1]["gains"][vs.metric]
    null_gains = [r["gains"][vs.metric] for r in records[2:]]
    test = null_test(claim_gain, np.asarray(null_gains))
    decision = decide_verdict(pvalue=test.pvalue, n_null=len(null_gains), alpha=vs.alpha,
                              claim_gain=claim_gain, full_gain=full_gain, rho=vs.rho,
                              location_size=size)
    return {"verdict": decision.verdict.value, "verdict_reason": decision.reason,
            "p_value": test.pvalue, "min_p_value": test.min_pvalue, "claim_gain": claim_gain,
            "full_gain": full_gain, "null_gains": null_gains,
            "optimality_ratio": decision.optimality_ratio, "null_mean": test.null_mean,
            "null_std": test.null_std, "claim_percentile": test.percentile,
            "n_null_effective": count_effective(null_gains, full_gain, vs.rho)}


def _activations(claim: Claim, data, loaded, adapter, cache: Path):
    """(train_x, train_y, val_x, val_y): head activations of every answer of the train and
    validation questions at the last token of "Q: {question} A: {answer}"."""
    import numpy as np

    from loccheck.activations import cached_head_activations
    from loccheck.localize import probe_examples

    train_items, val_items = probe_examples(data)
    for name, items in (("train", train_items), ("validation", val_items)):
        if len({label for _, _, label in items}) < 2:
            raise DataError(f"{data.source}: the {name} questions need both true and false answers "
                            "for the probes and ITI's directions (behavior.split)")
    texts = [text for _, text, _ in train_items + val_items]
    model_id = loaded.info["sha256"] or f"{loaded.info['name']}@{loaded.info['revision']}"
    acts = cached_head_activations(loaded.model, adapter, loaded.tokenizer, texts,
                                   model_sha=model_id, cache=cache)
    labels = np.array([label for _, _, label in train_items + val_items])
    n = len(train_items)
    return acts[:n], labels[:n], acts[n:], labels[n:]


def _probe(claim: Claim, acts):
    """The claim's probing heuristic on (train_x, train_y, val_x, val_y) activations: the same
    procedure for `loccheck localize` and for verify."""
    from loccheck.localize import probe_heads

    return probe_heads(*acts, seed=claim.behavior.split.seed, C=claim.heuristic.C)


def _probe_record(probe, heads, claim: Claim) -> dict:
    """Probe accuracies for the report; for pinned heads, whether probing still selects them."""
    k = len(heads)
    selected = format_heads(probe.top_k(k))
    record = {"val_accuracy": probe.val_accuracy.tolist(),
              "train_accuracy": probe.train_accuracy.tolist(),
              "n_train": probe.n_train, "n_val": probe.n_val, "top_k": k,
              "selected": selected,
              "claimed_accuracy": {str(h): probe.accuracy_of(h) for h in heads}}
    if not claim.location.from_heuristic:
        record["pinned_heads_reselected"] = selected == format_heads(heads)
    return record


def _data_record(dataset: str, summary: dict, fmt: str, example: str,
                 n_tokenized: dict[str, int]) -> dict:
    splits = summary["splits"]
    return {"dataset": dataset, "source": summary["source"], "sha256": summary["sha256"],
            "n_questions_read": summary["n_questions_read"],
            "n_questions_dropped": summary["n_questions_dropped"],
            "n_questions": {k: v["n_questions"] for k, v in splits.items()},
            "n_pairs": {k: v["n_pairs"] for k, v in splits.items()},
            "n_pairs_tokenized": n_tokenized,
            "prompt_format": fmt, "example_prompt": example}


def _versions() -> dict[str, str]:
    import numpy
    import peft
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "numpy": numpy.__version__, "loccheck": __version__}
