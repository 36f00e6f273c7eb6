"""Does localization inform editing? Hase et al.'s (2023) regression of edit success on the
layer edited and on the tracing effect at that layer, per (fact, layer). statsmodels does the
fits (imported when used: `pip install 'loccheck[analysis]'`); numpy and scipy the rest.

Three ordinary least-squares fits of success (one row per fact and edited layer):
`success ~ C(layer)`, `success ~ tracing`, and the joint model, `success ~ C(layer) * tracing`
(Hase et al.'s: a tracing slope per layer) or `success ~ C(layer) + tracing` (one slope); the
F-test of the joint model against the layer alone (the nested-model comparison); and the
Pearson correlation of tracing and success within each layer. R^2 is the share of the variance
of success each model explains; `added` is what the joint model explains beyond the layer.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

from loccheck.errors import LoccheckError


def _statsmodels():
    try:
        import statsmodels.formula.api as smf
        from statsmodels.stats.anova import anova_lm
        from statsmodels.tools.sm_exceptions import SingularMatrixWarning
    except ImportError:
        raise LoccheckError("trace-vs-edit needs statsmodels: pip install 'loccheck[analysis]'") from None
    return smf, anova_lm, SingularMatrixWarning


def _none_for_nan(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def regress(layers: Sequence[int], tracing: Sequence[float], success: Sequence[float], *,
            interaction: bool = True) -> dict:
    """The three fits, the F-test and the per-layer correlations (JSON-ready). `interaction`:
    the joint model is layer x tracing (Hase et al.), else layer + tracing."""
    import pandas as pd
    from scipy import stats

    smf, anova_lm, SingularMatrixWarning = _statsmodels()
    frame = pd.DataFrame({"layer": np.asarray(layers, dtype=int), "tracing": np.asarray(tracing, dtype=float),
                          "success": np.asarray(success, dtype=float)})
    if len(frame) < 3 or frame["layer"].nunique() < 2:
        raise LoccheckError(f"trace-vs-edit needs facts at two or more layers, got {len(frame)} rows at "
                            f"{frame['layer'].nunique()} layer(s)")
    if not np.isfinite(frame[["tracing", "success"]].to_numpy()).all():
        raise LoccheckError("trace-vs-edit: a tracing effect or an edit success is not finite")
    by_layer = smf.ols("success ~ C(layer)", frame).fit()
    by_tracing = smf.ols("success ~ tracing", frame).fit()
    joint = "success ~ C(layer) * tracing" if interaction else "success ~ C(layer) + tracing"
    with warnings.catch_warnings():
        # a layer whose tracing effect is the same for every fact (0 at a dead MLP) has no slope
        # of its own: the design is rank-deficient, and the pseudo-inverse fit (its rank as the
        # degrees of freedom) is what is wanted
        warnings.simplefilter("ignore", SingularMatrixWarning)
        both = smf.ols(joint, frame).fit()
    test = anova_lm(by_layer, both)                          # row 1: adding tracing to layer
    per_layer = {}
    for layer, group in frame.groupby("layer"):
        r = p = None
        if len(group) >= 3 and group["tracing"].std() > 0 and group["success"].std() > 0:
            res = stats.pearsonr(group["tracing"], group["success"])
            r, p = _none_for_nan(res.statistic), _none_for_nan(res.pvalue)
        per_layer[str(int(layer))] = {"n": int(len(group)), "r": r, "p": p,
                                      "mean_success": _none_for_nan(group["success"].mean()),
                                      "mean_tracing": _none_for_nan(group["tracing"].mean())}
    return {"n_rows": int(len(frame)), "n_layers": int(frame["layer"].nunique()),
            "joint": joint.removeprefix("success ~ "),
            "r2": {"layer": _none_for_nan(by_layer.rsquared), "tracing": _none_for_nan(by_tracing.rsquared),
                   "both": _none_for_nan(both.rsquared), "added": _none_for_nan(both.rsquared - by_layer.rsquared)},
            "f_test": {"F": _none_for_nan(test["F"].iloc[1]), "p": _none_for_nan(test["Pr(>F)"].iloc[1]),
                       "df": _none_for_nan(test["df_diff"].iloc[1])},
            # with an interaction: the slope at the first layer (each other layer adds its own)
            "tracing_coefficient": _none_for_nan(both.params["tracing"]),
            "per_layer": per_layer}


def sentence(result: dict) -> str:
    """What the numbers do and do not show, in words."""
    r2, f = result["r2"], result["f_test"]
    gain = r2["added"] or 0
    says = ("adding the tracing effect to the layer explains little more"
            if gain < 0.05 or (f["p"] is not None and f["p"] > 0.05) else
            "the tracing effect explains part of edit success beyond the layer edited")
    p = "n/a" if f["p"] is None else f"{f['p']:.3g}"
    return (f"The layer edited explains {r2['layer']:.1%} of the variance of edit success and the "
            f"tracing effect alone {r2['tracing']:.1%}; {says} ({result['joint']}: R^2 {r2['both']:.1%}, "
            f"{gain:+.1%} over the layer, F-test p = {p}). This is a statement about these facts, this "
            "model and this edit: "
            "it shows whether where tracing localizes a fact predicts where editing it works, not "
            "where the fact is stored, and a small sample of facts makes every R^2 uncertain.")
