"""Orchestration: claim -> model and data -> optimal edits (claim, whole model, null) -> statistics
-> verdict -> result.json and report. The CLI and the pytest plugin are thin layers on `verify`."""
from __future__ import annotations

import platform
from dataclasses import dataclass, fields
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
    data: dict
    model: dict
    config: dict
    versions: dict
    seeds: dict
    loccheck_version: str
    report_dir: str | None = None   # where report.md and result.json were written (not in the JSON)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "report_dir"}


def verify(claim: Claim | str | Path, *, out_dir: str | Path | None = None, write_report: bool = True,
           overrides: dict[str, Any] | None = None, progress: bool | None = None,
           cache_dir: str | Path | None = None) -> VerifyResult:
    """Verify a localization claim (a path to a claim file or a loaded `Claim`).

    Fits the optimal edit at the claimed heads, at the whole model and at
    `random_locations.n` random head sets of the same size, all with the same data, order,
    budget and seed, and compares their gains on the held-out test questions. The p-value is
    one-sided, ``(1 + #{null gains >= claim gain}) / (N + 1)``: ties count against the claim.
    """
    if not isinstance(claim, Claim):
        claim = load_claim(claim)
    if overrides:
        claim = claim.with_overrides(overrides)
    result = _run(claim, progress=progress, cache_dir=cache_dir)
    if not write_report:
        return result
    out = Path(out_dir) if out_dir is not None else Path("reports") / claim.name
    from loccheck.report import render_report, write_json_atomic

    payload = result.to_json()
    write_json_atomic(payload, out / "result.json")
    render_report(payload, out)
    return VerifyResult(**payload, report_dir=str(out))


def _check_location(claim: Claim, adapter) -> tuple[HeadLoc, ...]:
    if claim.location.from_heuristic:
        raise claim.error("location.from_heuristic", "computing the location from a heuristic "
                          "(probing) is not available in this version; list location.heads")
    heads = claim.location.head_locs
    for i, text in enumerate(claim.location.heads):
        loc = HeadLoc.parse(text)
        if loc.layer >= adapter.n_layers or loc.head >= adapter.n_heads:
            raise claim.error(f"location.heads[{i}]", f"{text} is outside the model: it has "
                              f"{adapter.n_layers} layers x {adapter.n_heads} heads (0-based)")
    if len(heads) == adapter.n_layers * adapter.n_heads:
        raise claim.error("location.heads", "the location is every head of the model; "
                          "there is no random location of the same size to compare with")
    return heads


def _run(claim: Claim, *, progress: bool | None, cache_dir) -> VerifyResult:
    import numpy as np
    import torch

    from loccheck.data import load_behavior
    from loccheck.edits import FullLoraEdit, HeadEdit, initial_read_vectors
    from loccheck.metrics import compute_metrics, gains
    from loccheck.models import get_adapter
    from loccheck.models.loading import load_model
    from loccheck.null import sample_null_locations
    from loccheck.progress import Progress
    from loccheck.prompts import format_prompt, resolve_format, tokenize_pairs
    from loccheck.scoring import all_pair_logprobs
    from loccheck.stats import null_test
    from loccheck.training import EditConfig, train_edit
    from loccheck.verdict import decide_verdict

    ms, bs, es, rs, vs = claim.model, claim.behavior, claim.edit, claim.random_locations, claim.verdict
    base_dir = claim.path.parent if claim.path is not None else None

    # Data first: a bad data path should fail before a model is loaded.
    data = load_behavior(dataset=bs.dataset, path=bs.path, base_dir=base_dir,
                         split=(bs.split.train, bs.split.validation, bs.split.test),
                         split_seed=bs.split.seed, max_questions=bs.max_questions,
                         max_pairs_per_question=bs.max_pairs_per_question)
    loaded = load_model(ms.name, revision=ms.revision, device=ms.device, dtype=ms.dtype,
                        trust_remote_code=ms.trust_remote_code, cache=cache_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    adapter = get_adapter(model)
    heads = _check_location(claim, adapter)

    fmt = resolve_format(tokenizer, bs.prompt_format)
    train = tokenize_pairs(tokenizer, data.train, fmt, bs.system_prompt)
    test = tokenize_pairs(tokenizer, data.test, fmt, bs.system_prompt)
    for split_name, pairs in (("train", train), ("test", test)):
        if not pairs:
            raise DataError(f"{data.source}: the {split_name} split has no usable preference pairs "
                            f"after tokenization (behavior.max_questions / behavior.split)")
    pad_id = tokenizer.pad_token_id
    device = next(model.parameters()).device

    # pi0 never changes: its log-probabilities are computed once, for every edit.
    reference = all_pair_logprobs(model, train, pad_id).to(device)
    base_metrics = compute_metrics(all_pair_logprobs(model, test, pad_id).numpy())

    nulls = sample_null_locations(n_layers=adapter.n_layers, n_heads=adapter.n_heads,
                                  size=len(heads), n=rs.n, seed=rs.seed, exclude=heads,
                                  match_layers_of=heads if rs.match_layers else None)
    a_init = initial_read_vectors(adapter, es.seed, es.init_std)
    common = dict(objective=es.objective, tau=es.tau, beta=es.beta, epochs=es.epochs,
                  batch_size=es.batch_size, weight_decay=es.weight_decay,
                  warmup_ratio=es.warmup_ratio, max_steps=es.max_steps, seed=es.seed,
                  convergence_tol=es.convergence_tol)
    local_cfg = EditConfig(learning_rate=es.learning_rate, **common)
    full_cfg = EditConfig(learning_rate=es.full_model_learning_rate, **common)

    jobs = [("claim", None, heads), ("full", None, None)] + [("random", i, loc) for i, loc in enumerate(nulls)]
    bar = Progress(len(jobs), enabled=progress)
    records = []
    try:
        for role, index, loc in jobs:
            if role == "full":
                edit, cfg, label = FullLoraEdit(adapter, a_init), full_cfg, "whole model"
            else:
                edit, cfg = HeadEdit(adapter, loc, a_init, read=es.read), local_cfg
                label = "claim" if role == "claim" else f"random {index}"
            bar.begin_edit(label, cfg.n_steps(len(train)))
            with edit.attached(model):
                fit = train_edit(model, edit, train, reference, cfg, pad_id, on_step=bar.step)
                metrics = compute_metrics(all_pair_logprobs(model, test, pad_id).numpy())
            gain = gains(metrics, base_metrics)
            records.append({
                "role": role, "index": index,
                "location": "all" if loc is None else format_heads(loc),
                "n_params": edit.n_params, "learning_rate": cfg.learning_rate,
                "steps": len(fit.loss_curve), "epochs": cfg.epochs,
                "final_loss": fit.final_loss, "still_falling": fit.still_falling,
                "loss_curve": list(fit.loss_curve), "metrics": metrics, "gains": gain})
            bar.end_edit(label, fit.final_loss, fit.still_falling, gain[vs.metric])
    finally:
        bar.close()

    claim_gain = records[0]["gains"][vs.metric]
    full_gain = records[1]["gains"][vs.metric]
    null_gains = [r["gains"][vs.metric] for r in records[2:]]
    test_result = null_test(claim_gain, np.asarray(null_gains))
    decision = decide_verdict(pvalue=test_result.pvalue, n_null=len(null_gains), alpha=vs.alpha,
                              claim_gain=claim_gain, full_gain=full_gain, rho=vs.rho,
                              location_size=len(heads))
    verdict = decision.verdict.value
    expected = claim.expect or "SUPPORTED"
    example = format_prompt(tokenizer, data.test[0].prompt, fmt, bs.system_prompt)
    return VerifyResult(
        verdict=verdict, verdict_reason=decision.reason, p_value=test_result.pvalue,
        n_random=len(null_gains), min_p_value=test_result.min_pvalue, metric=vs.metric,
        alpha=vs.alpha, rho=vs.rho, claim_gain=claim_gain, full_gain=full_gain,
        null_gains=null_gains, optimality_ratio=decision.optimality_ratio,
        null_mean=test_result.null_mean, null_std=test_result.null_std,
        claim_percentile=test_result.percentile, expect=claim.expect,
        matches_expectation=verdict == expected, claim_name=claim.name,
        claim_file=str(claim.path) if claim.path is not None else None, claim_text=claim.claim,
        location=format_heads(heads), heuristic=claim.effective_config()["heuristic"],
        base_metrics=base_metrics, edits=records,
        data=_data_record(bs.dataset, data.summary(), fmt, example, len(train), len(test)),
        model={**loaded.info, **adapter.describe()},
        config=claim.effective_config(), versions=_versions(),
        seeds={"edit": es.seed, "random_locations": rs.seed, "split": bs.split.seed},
        loccheck_version=__version__)


def _data_record(dataset: str, summary: dict, fmt: str, example: str, n_train: int,
                 n_test: int) -> dict:
    splits = summary["splits"]
    return {"dataset": dataset, "source": summary["source"], "sha256": summary["sha256"],
            "n_questions_read": summary["n_questions_read"],
            "n_questions_dropped": summary["n_questions_dropped"],
            "n_questions": {k: v["n_questions"] for k, v in splits.items()},
            "n_pairs": {k: v["n_pairs"] for k, v in splits.items()},
            "n_pairs_tokenized": {"train": n_train, "test": n_test},
            "prompt_format": fmt, "example_prompt": example}


def _versions() -> dict[str, str]:
    import numpy
    import peft
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "numpy": numpy.__version__, "loccheck": __version__}
