"""Tests for the evidence report (loccheck.report) and its figures. No model needed. The results
are built in the first schema's layout and upgraded, so the upgrade is exercised too."""
from __future__ import annotations

import json
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from loccheck import files
from loccheck.files import write_json_atomic, write_text_atomic
from loccheck.edits.optimal import plot_loss_curves
from loccheck.report import plots, render_markdown, render_report, upgrade
from loccheck.render.format import P_CONVENTION

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FILES = {"report.md", "null_hist.png", "null_hist_preference_accuracy.png", "loss_curves.png"}


def _loss_curve(rng, start, floor, steps=16):
    t = np.arange(steps)
    return [float(v) for v in floor + (start - floor) * np.exp(-t / 4) + rng.normal(0, 0.01, steps)]


def make_v1_result(seed=0, n_random=19, verdict="FALSIFIED", still_falling=(("claim", None),
                ("random", 3), ("random", 11)), alpha=0.05):
    """A realistic result dict whose statistics are computed here, as stats.py would, in the
    layout of schema 1, then upgraded to the current one."""
    rng = np.random.default_rng(seed)
    all_heads = [f"L{layer}H{head}" for layer in range(30) for head in range(9)]  # in order

    def sample_heads():
        return [all_heads[i] for i in sorted(rng.choice(len(all_heads), 16, replace=False))]

    heads = sample_heads()
    base = {"preference_margin": -0.52, "preference_accuracy": 0.45}
    null = rng.normal(1.1, 0.3, n_random)
    claim_gain, full_gain = 1.23, 2.0
    k = int(np.count_nonzero(null >= claim_gain))
    p = (1 + k) / (n_random + 1)
    flagged = set(still_falling)

    def edit(role, index, location, gain):
        acc_gain = float(gain / 10)
        return {"role": role, "index": index, "location": location, "n_params": 1152,
                "learning_rate": 5e-4, "steps": 16, "epochs": 2,
                "loss_curve": _loss_curve(rng, 0.25, 0.2 / (1 + gain)),
                "final_loss": None, "still_falling": (role, index) in flagged,
                "metrics": {"preference_margin": base["preference_margin"] + gain,
                            "preference_accuracy": base["preference_accuracy"] + acc_gain},
                "gains": {"preference_margin": float(gain), "preference_accuracy": acc_gain}}

    edits = [edit("claim", None, heads, claim_gain), edit("full", None, "all", full_gain)]
    edits += [edit("random", i, sample_heads(), float(g)) for i, g in enumerate(null)]
    for e in edits:
        e["final_loss"] = e["loss_curve"][-1]
    config = {"model": {"name": "smollm2-135m-instruct"}, "behavior": {"dataset": "truthfulqa"},
              "location": {"heads": heads}, "heuristic": {"method": "manual"},
              "edit": {"objective": "ipo", "tau": 0.1}, "random_locations": {"n": n_random},
              "verdict": {"alpha": 0.05, "rho": 0.9}, "expect": "FALSIFIED"}
    return {
        "loccheck_version": "0.1.0", "claim_name": "iti_truthful",
        "claim_file": "claims/iti_truthful.yaml",
        "claim_text": "Truthfulness of SmolLM2 answers lives in these 16 heads.",
        "verdict": verdict, "verdict_reason": f"p = {p:.3g} > alpha = 0.05",
        "expect": "FALSIFIED", "matches_expectation": verdict == "FALSIFIED",
        "metric": "preference_margin", "alpha": alpha, "rho": 0.9,
        "p_value": p, "n_random": n_random, "min_p_value": 1 / (n_random + 1),
        "claim_gain": claim_gain, "full_gain": full_gain, "null_gains": [float(g) for g in null],
        "optimality_ratio": claim_gain / full_gain, "null_mean": float(null.mean()),
        "null_std": float(null.std(ddof=1)),
        "claim_percentile": float(100 * np.mean(null < claim_gain)),
        "base_metrics": base, "location": heads,
        "heuristic": {"method": "manual", "citation": "Li et al. 2023, ITI", "top_k": 16},
        "edits": edits,
        "data": {"dataset": "truthfulqa", "source": "/data/TruthfulQA.csv", "sha256": "ab" * 32,
                 "prompt_format": "qa", "example_prompt": "Q: Why do veins appear blue?\nA:",
                 "n_questions": {"train": 490, "validation": 163, "test": 164},
                 "n_pairs": {"train": 1960, "validation": 652, "test": 656}},
        "model": {"name": "smollm2-135m-instruct", "resolved": "/models/smollm2",
                  "sha256": "cd" * 32, "architecture": "llama", "n_layers": 30, "n_heads": 9,
                  "head_dim": 64, "device": "cpu", "dtype": "float32"},
        "config": config,
        "versions": {"python": "3.11.7", "torch": "2.13.0", "numpy": "2.4.6", "loccheck": "0.1.0"},
        "seeds": {"edit": 0, "random_locations": 0, "split": 0},
    }


def make_result(*args, **kw):
    return upgrade(make_v1_result(*args, **kw))


@pytest.fixture
def result():
    return make_result()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One rendering shared by the read-only tests (rendering PNGs takes about a second)."""
    path = render_report(make_result(), tmp_path_factory.mktemp("out"))
    return path, path.read_text(encoding="utf-8")


def _section(text, heading):
    return text.split(f"\n## {heading}\n")[1].split("\n## ")[0]


def _row(text, label):
    """Cells of the one table row whose first cell starts with `label`."""
    rows = [ln for ln in text.splitlines()
            if ln.startswith("|") and ln.strip("|").split("|")[0].strip().startswith(label)]
    assert len(rows) == 1, f"expected one table row starting with {label!r}, got {rows}"
    return [c.strip() for c in rows[0].strip("|").split("|")]


def test_writes_exactly_the_report_and_its_three_figures(rendered):
    path, _ = rendered
    assert path.name == "report.md"
    assert {p.name for p in path.parent.iterdir()} == FILES  # no temp files left behind


def test_verdict_first(rendered):
    lines = [ln for ln in rendered[1].splitlines() if ln.strip()]
    assert lines[0] == "# loccheck: iti_truthful"
    assert lines[1] == "**Verdict: FALSIFIED** (expected FALSIFIED: as expected)"
    assert lines[2].startswith("p = ")


def test_claim_section(result, rendered):
    text = _section(rendered[1], "Claim")
    assert f"> {result['claim_text']}" in text
    assert "- Claim file: `claims/iti_truthful.yaml`" in text
    assert "- Found by: manual (Li et al. 2023, ITI)" in text
    assert ", ".join(f"`{h}`" for h in result["location"]) in text  # every head, unabbreviated


def test_expectation_mismatch_and_absent():
    r = make_result(verdict="SUPPORTED")
    assert "**Verdict: SUPPORTED** (expected FALSIFIED: NOT as expected)" in render_markdown(r)
    r["expect"], r["matches_expectation"] = None, None
    assert "**Verdict: SUPPORTED** (no expectation stated)" in render_markdown(r)


def test_statistics_table_shows_exact_p_and_n(result, rendered):
    text = _section(rendered[1], "Statistics")
    t = result["tests"]["optimal"]
    null = np.asarray(t["null_gains"])
    k = int(np.count_nonzero(null >= t["claim_gain"]))
    n = len(null)
    p = (1 + k) / (n + 1)
    assert _row(text, "p-value")[1] == f"{p:.4g} (= {k + 1}/{n + 1})"
    assert _row(text, "N (random locations)")[1] == str(n)
    assert _row(text, "null gains >= claim gain")[1] == f"{k} of {n}"
    assert _row(text, "min reachable p")[1] == f"{1 / (n + 1):.4g}"
    assert P_CONVENTION in text
    # Primary metric first; one value and one gain column per metric.
    head = next(ln for ln in text.splitlines() if "preference_margin gain" in ln)
    assert head.index("preference_margin") < head.index("preference_accuracy")
    assert _row(text, "claimed location")[2] == "1.23"
    assert _row(text, "whole-model edit (ceiling)")[2] == "2"
    null_cell = _row(text, "random locations (null)")[2]
    assert null_cell.startswith(f"{t['null_mean']:.4g} ± {t['null_std']:.4g} [")


def test_still_falling_edits_named_in_warning(rendered):
    text = rendered[1]
    warning = next(ln for ln in text.splitlines() if ln.startswith("**Warning:**"))
    assert "did not converge" in warning
    names = re.findall(r"claimed location|whole model|random \d+", warning.split("not be optimal:")[1])
    assert names == ["claimed location", "random 3", "random 11"]


def test_all_converged_message():
    text = render_markdown(make_result(still_falling=()))
    assert "**Warning:**" not in text
    assert "All 21 edits converged" in text


def test_figures_linked_relatively_with_alt_text(rendered):
    links = re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", rendered[1])
    assert [target for _, target in links] == ["null_hist.png", "null_hist_preference_accuracy.png", "loss_curves.png"]
    assert links[0][0].startswith("Null distribution of preference_margin gain at 19 random "
                                  "16-head locations")
    assert links[1][0] == "Null distribution of preference_accuracy gain (descriptive)"
    assert all(len(alt) > 40 for alt, _ in links[::2])


def test_long_locations_abbreviated(result, rendered):
    text = _section(rendered[1], "Convergence of the optimal edits")
    assert _row(text, "claimed location")[1] == ", ".join(result["location"][:4]) + ", … (16 heads)"
    assert _row(text, "whole model")[1] == "all heads"


def test_rendering_is_deterministic(result, tmp_path):
    a = render_report(result, tmp_path / "a").parent
    b = render_report(result, tmp_path / "b").parent
    # Re-rendering from result.json (keys sorted by json.dumps) must give the same bytes too.
    write_json_atomic(result, tmp_path / "result.json")
    reloaded = json.loads((tmp_path / "result.json").read_text())
    c = render_report(reloaded, tmp_path / "c").parent
    render_report(result, a)  # rendering over an existing report is fine and idempotent
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes() == (c / name).read_bytes(), name


def test_nan_renders_as_na(result):
    result["tests"]["optimal"]["optimality_ratio"] = float("nan")
    result["tests"]["optimal"]["claim_percentile"] = None
    text = _section(render_markdown(result), "Statistics")
    assert _row(text, "optimality ratio")[1] == "n/a"
    assert _row(text, "claim percentile")[1] == "n/a"
    assert re.search(r"\bnan\b", text, re.IGNORECASE) is None


def test_pngs_valid_and_nontrivial(rendered):
    for name in ("null_hist.png", "loss_curves.png"):
        data = (rendered[0].parent / name).read_bytes()
        assert data[:8] == PNG_MAGIC
        width, height = struct.unpack(">II", data[16:24])  # IHDR chunk
        assert width >= 600 and height >= 400
        assert len(data) > 10_000


def test_plots_byte_identical_and_closed(result, tmp_path):
    import matplotlib.pyplot as plt
    kw = dict(location_size=16)
    t = result["tests"]["optimal"]
    args = (t["null_gains"], t["claim_gain"], t["ceiling_gain"], result["metric"])
    p1 = plots.plot_null_histogram(*args, tmp_path / "h1.png", **kw)
    p2 = plots.plot_null_histogram(*args, tmp_path / "h2.png", **kw)
    assert p1.read_bytes() == p2.read_bytes()
    l1 = plot_loss_curves(result["edits"], tmp_path / "l1.png")
    l2 = plot_loss_curves(result["edits"], tmp_path / "l2.png")
    assert l1.read_bytes() == l2.read_bytes()
    assert plt.get_fignums() == []


def test_plots_tolerate_nan_and_empty(tmp_path):
    p = plots.plot_null_histogram([float("nan"), 1.0, 2.0], float("nan"), None, "m",
                                  tmp_path / "h.png", location_size=1)
    assert p.read_bytes()[:8] == PNG_MAGIC
    edits = [{"role": "claim", "loss_curve": [1.0, -0.5, float("nan")]},
             {"role": "random", "index": 0, "loss_curve": []}]
    assert plot_loss_curves(edits, tmp_path / "l.png").read_bytes()[:8] == PNG_MAGIC
    assert plot_loss_curves([], tmp_path / "e.png").read_bytes()[:8] == PNG_MAGIC


def test_write_json_atomic_round_trip(tmp_path):
    obj = {"b": [1.5, float("nan"), float("-inf")], "a": None, "c": {"z": 1, "y": "é", "w": (float("inf"),)}}
    path = write_json_atomic(obj, tmp_path / "sub" / "result.json")
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    assert "NaN" not in text and "Infinity" not in text          # strict JSON: RFC 8259 has neither
    back = json.loads(text)
    assert back == {"a": None, "b": [1.5, None, None], "c": {"z": 1, "y": "é", "w": [None]}}
    write_json_atomic({"x": 1}, path)  # overwrite in place
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    path = write_text_atomic("old\n", tmp_path / "report.md")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic("new\n", path)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # the temp file was removed


@pytest.mark.parametrize("verdict, phrase", [
    ("FALSIFIED", "no evidence that it lives in them"),
    ("SUPPORTED", "does not show uniqueness beyond the sampled null"),
    ("SPECIFIC_BUT_WEAK", "not sufficient"),
])
def test_interpretation_per_verdict(verdict, phrase):
    text = render_markdown(make_result(verdict=verdict))
    section = text.split("## What this does and does not show")[1].split("## Statistics")[0]
    assert phrase in section


def test_underpowered_states_n_needed():
    r = make_result(n_random=9, verdict="UNDERPOWERED")
    text = render_markdown(r)
    assert "at least 19 random locations are needed" in text
    r = make_result(n_random=9, verdict="UNDERPOWERED", alpha=0.01)
    assert "at least 99 random locations are needed" in render_markdown(r)


def test_reproducibility_section(result, rendered):
    text = _section(rendered[1], "Reproducibility")
    assert "loccheck verify claims/iti_truthful.yaml" in text
    assert "Q: Why do veins appear blue?\nA:" in text
    assert "```yaml\nmodel:\n" in text  # claim-file section order, not alphabetical
    assert text.index("random_locations:") < text.index("verdict:\n")
    assert _row(text, "train")[1:] == ["490", "1960"]
    assert f"| sha256       | {'cd' * 32} |" in text and "ab" * 32 in text


def test_no_heavy_imports():
    code = "import sys, loccheck.report; assert 'torch' not in sys.modules; " \
           "assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_ceiling_that_fell_short_is_explained_by_its_training_fit():
    r = make_result()
    r["tests"]["optimal"]["ceiling_short"] = True
    claim, ceiling = (next(e for e in r["edits"] if e["role"] == role) for role in ("claim", "ceiling"))
    claim["final_objective"], ceiling["final_objective"] = 0.33, 0.27      # the ceiling fits better
    text = render_markdown(r)
    assert "**The ceiling fell short:**" in text and "generalisation, not optimisation" in text
    ceiling["final_objective"] = 0.9                                       # ... or it did not
    assert "did not reach its optimum" in render_markdown(r)
    r["tests"]["optimal"]["ceiling_short"] = False
    assert "fell short" not in render_markdown(r)
