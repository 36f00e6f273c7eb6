"""The trace-vs-edit report: the regressions' table, per-layer numbers, the scatter of edit
success against tracing effect per layer, and the R^2 bars (Hase et al.'s figure)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from loccheck.files import write_json_atomic, write_text_atomic
from loccheck.render.format import fmt, table

SCATTER_NAME, R2_NAME = "success_vs_tracing.png", "r2.png"
# Hase et al. (2023), GPT-J, CounterFact, error injection with ROME, measured as their code
# measures (rewrite score, fraction restored, layer x tracing): the share of the variance of
# edit success the layer edited explains, and what adding the tracing effect explains beyond it
# (their notebook's R2_lyr and R2_diff). Printed only beside the same measures.
HASE_GPTJ = {"layer": 0.947, "added": 0.001}
MEASURED = {
    "hase": ("Success: the rewrite score of the counterfactual target, (p_post - p_pre) / (1 - p_pre), "
             "its probability (over all its tokens) before and after the edit, floored at 0. Tracing "
             "effect: the share of the corruption's effect that restoring recovers, "
             "max(0, (p_restored - p_corrupt) / |p_clean - p_corrupt|), its largest value over the "
             "prompt's tokens, restoring {window} MLP layers around the layer. Joint model: layer x "
             "tracing. As Hase et al. measure (google/belief-localization)."),
    "loccheck": ("Success: how much the edit raises the counterfactual target's log-probability over "
                 "the true attribute's (after minus before). Tracing effect: the fact's mean indirect "
                 "effect p_restored - p_corrupt at the {aggregate}, restoring {window} MLP layers "
                 "around the layer. Joint model: layer + tracing. Not Hase et al.'s measures, so "
                 "their GPT-J figures are not printed beside these."),
}


def write_report(result: dict, out_dir: Path) -> Path:
    from loccheck.studies.trace_vs_edit.regression import sentence

    measures = result.get("measures", "loccheck")
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot_scatter(result, out_dir / SCATTER_NAME)
    _plot_r2(result, out_dir / R2_NAME)
    rows = []
    for c, a in result["analyses"].items():
        rows.append([c, fmt(a["r2"]["layer"]), fmt(a["r2"]["tracing"]), fmt(a["r2"]["both"]),
                     fmt(a["r2"]["added"]), fmt(a["f_test"]["F"]), fmt(a["f_test"]["p"])])
    if measures == "hase":
        rows.append(["Hase et al., GPT-J (reference)", fmt(HASE_GPTJ["layer"]), "", "",
                     fmt(HASE_GPTJ["added"]), "", ""])
    joint = next(iter(result["analyses"].values()))["joint"]
    per_layer = []
    first = next(iter(result["analyses"].values()))["per_layer"]
    for layer in result["layers"]:
        cells = [f"L{layer}M", fmt(first[str(layer)]["mean_success"]), fmt(result["beats"][str(layer)])]
        for a in result["analyses"].values():
            p = a["per_layer"][str(layer)]
            cells += [fmt(p["mean_tracing"]), fmt(p["r"])]
        per_layer.append(cells)
    heads = ["layer", "mean success", "new beats old"]
    for c in result["analyses"]:
        heads += [f"mean tracing ({c})", f"r ({c})"]
    measured = MEASURED[measures].format(window=result.get("window", ""),
                                         aggregate=result["aggregate"].replace("_", " "))
    lines = [f"# loccheck trace-vs-edit: {Path(result['claim']).stem}", "",
             *(sentence(a) + f" ({c} tracing)" for c, a in result["analyses"].items()), "",
             "## What was measured", "",
             f"{result['n_facts']} train facts (those traced by every corruption asked for), each edited "
             f"alone at each of {len(result['layers'])} MLP layers with ROME's edit (the same settings at "
             f"every layer); measures `{measures}`. {measured}", "",
             "## Regressions", "",
             f"R^2 of ordinary least squares of success on the layer (categorical), on the tracing effect, "
             f"and on both ({joint}); `added`: what both explain beyond the layer; the F-test of both "
             "against the layer alone (statsmodels).", "",
             table(rows, ["tracing", "R^2 layer", "R^2 tracing", f"R^2 {joint}", "added", "F", "p"]),
             "", f"![R^2 of each model]({R2_NAME})", "",
             "## Per layer", "", table(per_layer, heads), "",
             f"![Edit success against tracing effect, one panel per layer]({SCATTER_NAME})", ""]
    write_json_atomic(result, out_dir / "result.json")
    return write_text_atomic("\n".join(lines), out_dir / "report.md")


def _plot_scatter(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from loccheck.render.figures import save_figure

    layers, success = np.array(result["row_layers"]), np.array(result["success"])
    n = len(result["layers"])
    cols = min(6, n)
    rows = -(-n // cols)
    with plt.style.context("default"):
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.0 * rows), squeeze=False,
                                 sharey=True, layout="constrained")
        for ax, layer in zip(axes.flat, result["layers"]):
            mine = layers == layer
            for row in result["rows"]:
                ax.scatter(np.array(row["tracing"])[mine], success[mine], s=8, label=row["corruption"])
            ax.set_title(f"L{layer}M", fontsize=8)
            ax.tick_params(labelsize=6)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.supxlabel("tracing effect", fontsize=8)
        fig.supylabel("rewrite score" if result.get("measures") == "hase" else
                      "edit success (log-prob. margin gained)", fontsize=8)
        if len(result["rows"]) > 1:
            axes.flat[0].legend(fontsize=6)
        save_figure(fig, path)


def _plot_r2(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from loccheck.render.figures import save_figure

    models = ["layer", "tracing", "both"]
    groups = list(result["analyses"])
    with plt.style.context("default"):
        fig, ax = plt.subplots(figsize=(5.5, 3.2), layout="constrained")
        width = 0.8 / len(groups)
        for g, name in enumerate(groups):
            values = [result["analyses"][name]["r2"][m] or 0.0 for m in models]
            ax.bar(np.arange(3) + g * width, values, width, label=f"{name} tracing")
        joint = result["analyses"][groups[0]]["joint"]
        ax.set_xticks(np.arange(3) + width * (len(groups) - 1) / 2,
                      [f"success ~ {m}" for m in ("layer", "tracing", joint)], fontsize=8)
        ax.set_ylabel("R^2")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        save_figure(fig, path)
