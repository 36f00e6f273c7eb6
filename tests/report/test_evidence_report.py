"""The report's sections for the claim's tests beyond editing (loccheck.report.evidence) and their
figures. The slow tests render a real run on a tiny Llama whose only live head is L1H0 (the claim
L1H0 + L0H1, so L0H1 contributes nothing); the others format hand-built evidence, without torch."""
from __future__ import annotations

import json
import struct

import pytest

from loccheck.render.format import fmt
from loccheck.report import evidence_plots, render_markdown, render_report
from tests.report.test_report import make_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXTRA = "tests: [editing, necessity, without, minimality]\nnecessity: {n: 39}\nsize_curve: {sizes: [1, 2, 3], n: 3}\n"


def _section(text, heading):
    return text.split(f"\n## {heading}\n")[1].split("\n## ")[0]


def _rows(text, label):
    """Cells of the table rows whose first cell is `label`."""
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines()
            if ln.startswith("|") and ln.strip("|").split("|")[0].strip() == label]


def _row(text, label):
    rows = _rows(text, label)
    assert len(rows) == 1, f"expected one table row {label!r}, got {rows}"
    return rows[0]


# --- a real run ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_run(tmp_path_factory, one_torch_thread):
    """verify() on the tiny model: result.json and the report it wrote."""
    from loccheck.locations import HeadLoc
    from loccheck.run.verify import verify
    from loccheck.testing import claim_text, write_model_dir, write_pairs

    root = tmp_path_factory.mktemp("evidence-run")
    model, pairs = write_model_dir(root / "model", "llama", [HeadLoc(1, 0)]), write_pairs(root / "pairs.jsonl")
    (root / "claim.yaml").write_text(claim_text(model, pairs, ["L1H0", "L0H1"], extra=EXTRA))
    verify(root / "claim.yaml", out_dir=root / "report", cache_dir=root / "cache", progress=False)
    out = root / "report"
    return out, json.loads((out / "result.json").read_text()), (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_real_run_rerenders_byte_identical_from_result_json(real_run, tmp_path):
    out, result, _ = real_run
    again = render_report(result, tmp_path / "again").parent
    names = {p.name for p in out.iterdir()} - {"result.json", "timings.json"}
    assert {"report.md", "necessity_hist.png", "size_curve.png"} <= names
    assert {p.name for p in again.iterdir()} == names
    for name in sorted(names):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


@pytest.mark.slow
def test_real_run_figures(real_run):
    out, _, text = real_run
    for name in ("necessity_hist.png", "size_curve.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
        assert struct.unpack(">II", data[16:24])[0] >= 600
        assert f"]({name})" in text


@pytest.mark.slow
def test_real_run_verdict_and_its_table(real_run):
    _, r, text = real_run
    ev = r["evidence"]
    assert r["tests_listed"] == ["editing", "necessity", "without", "minimality"]
    lines = text.splitlines()
    assert lines[2] == f"**Verdict: {r['verdict']}** (no expectation stated)"
    assert lines[4] == r["verdict_reason"]
    top = text.split("\n## Claim\n")[0]
    t, n = r["tests"]["optimal"], ev["necessity"]
    assert _row(top, "editing")[2:] == [
        "`preference_margin` gain", fmt(t["claim_gain"]),
        f"{fmt(t['null_mean'])} ± {fmt(t['null_std'])} ({t['n_null_fitted']} of {t['n_null']})",
        fmt(ev["editing"]["p_value"]), fmt(ev["editing"]["p_holm"]), ev["editing"]["verdict"]]
    assert _row(top, "necessity")[2:] == [
        "`preference_margin` drop", fmt(n["claim_drop"]),
        f"{fmt(n['null_mean'])} ± {fmt(n['null_std'])} ({n['n_null_fitted']} of 39)",
        fmt(n["p_value"]), fmt(n["p_holm"]), n["verdict"]]
    assert "shared by Holm's step-down method across the 2 listed tests" in top
    assert "SUPPORTED only if every listed test supports the claim" in top
    assert "Listed without a verdict: without, minimality" in top


@pytest.mark.slow
def test_real_run_necessity_section(real_run):
    _, r, text = real_run
    n, sec = r["evidence"]["necessity"], _section(text, "Necessity (ablation)")
    assert _row(sec, "claim's drop")[1] == fmt(n["claim_drop"])
    assert _row(sec, "random drops: median")[1] == fmt(n["null_median"])
    assert _row(sec, "random drops: mean ± std")[1] == f"{fmt(n['null_mean'])} ± {fmt(n['null_std'])}"
    k, l = n["n_at_least"], n["n_null_fitted"]
    assert n["stopped_early"]                                   # this run decides early
    assert _row(sec, "p-value (one-sided, sequential)")[1] == f"{fmt(n['p_value'])} (= {k}/{l})"
    assert _row(sec, "N (random locations)")[1] == f"39 planned, {l} ablated ({39 - l} not needed)"
    assert _row(sec, "Holm-adjusted p")[1] == f"{fmt(n['p_holm'])} (over 2 tests)"
    assert "`mean` ablation" in sec and "replaced by its mean over the train split's tokens" in sec
    assert "says nothing about sufficiency" in sec and "redundancy" in sec
    assert "another ablation can give a different answer" in sec
    assert f"**{n['verdict']}:** {n['verdict_reason']}" in sec


@pytest.mark.slow
def test_real_run_without_section(real_run):
    _, r, text = real_run
    w, sec = r["evidence"]["without"], _section(text, "Editing without the location")
    row = _row(sec, "whole model without the claimed heads, an edit of the other 6 heads")
    assert row[1:] == [fmt(w["gain"]), fmt(w["ratio"])]
    assert _row(sec, "whole model (ceiling)")[1] == fmt(w["ceiling_gain"])
    assert w["ratio"] == 0                                       # L1H0 is the only live head
    assert "needs them; the rest of the model cannot carry it alone" in sec


@pytest.mark.slow
def test_real_run_minimality_names_the_free_site(real_run):
    _, r, text = real_run
    sec = _section(text, "Minimality")
    m = r["evidence"]["minimality"]
    assert [s["site"] for s in m["editing"] if s["free"]] == ["L0H1"]
    editing, necessity = sec.split("Necessity (the claim's")
    # refitted without the dead head: the same edit, to round-off (exactly 0 under AVX-512, 4e-6 under AVX2)
    cost = m["editing"][0]["cost"]
    assert abs(cost) <= 1e-4 * r["tests"][r["primary_method"]]["claim_gain"]
    assert _row(editing, "L0H1")[1:] == [fmt(m["editing"][0]["without_it"]), fmt(cost), "**yes**"]
    assert _row(editing, "L1H0")[3] == "no"
    assert _row(necessity, "L0H1")[3] == "**yes**" and _row(necessity, "L1H0")[3] == "no"
    assert "Editing: `L0H1` contributes nothing measurable (leaving it out costs under 5% of the claim's gain)" in sec
    assert "Necessity: `L0H1` contributes nothing measurable" in sec
    assert "`L0H1` contributes nothing measurable to any listed test" in sec


@pytest.mark.slow
def test_real_run_size_curve(real_run):
    _, r, text = real_run
    c, sec = r["evidence"]["size_curve"], _section(text, "Size curve")
    editing = sec.split("Necessity (`")[0]
    for row in c["editing"]["rows"]:
        assert _row(editing, str(row["size"]))[1:] == [
            str(row["n"]), fmt(row["median"]), f"[{fmt(row['q1'])}, {fmt(row['q3'])}]",
            f"[{fmt(row['min'])}, {fmt(row['max'])}]"]
    labels = [ln.split("|")[1].strip() for ln in editing.splitlines() if ln.startswith("| ")][1:]
    assert labels == ["1", "2", "**2: the claimed heads**", "3"]   # the claim in its place
    assert f"the claimed 2 heads are worth about {c['editing']['worth']} random heads (by editing)" in sec
    assert "fewer draws per size (n = 3) than the main null (19 for the editing test, 39 for necessity)" in sec


# --- hand-built evidence: formatting alone ------------------------------------------------------

def _curve(claim, claim_size, sizes, medians, worth):
    rows = [{"size": s, "n": 5, "n_finite": 5, "values": [m] * 5, "min": m - 1, "q1": m - 0.5, "median": m,
             "q3": m + 0.5, "max": m + 1} for s, m in zip(sizes, medians)]
    return {"rows": rows, "claim": claim, "claim_size": claim_size, "worth": worth, "largest": max(sizes)}


def with_evidence(tests=("editing", "necessity", "without", "minimality"), *, worth=4, ratio=0.95,
                  stopped=False, free=(1,), expect=None):
    """make_result()'s 16-head claim with evidence of each listed test."""
    r = make_result()
    heads, t = r["location"], r["tests"]["optimal"]
    ev = {"editing": {"verdict": t["verdict"], "verdict_reason": t["verdict_reason"], "p_value": t["p_value"],
                      "p_holm": None, "holm": None}}
    if "necessity" in tests:
        drops = [0.1 * (i % 7) for i in range(99)]
        ev["necessity"] = {"ablation": "resample", "claim_drop": 0.55, "claim_value": -1.07, "null_drops": drops,
                           "p_value": 0.2, "n_null": 99, "n_null_fitted": 99, "n_at_least": 19, "min_p_value": 0.01,
                           "null_mean": 0.3, "null_std": 0.2, "null_median": 0.3, "stopped_early": stopped,
                           "stop": "full", "seed": 3, "locations": [], "verdict": "FALSIFIED",
                           "verdict_reason": "p = 0.2 > alpha = 0.05."}
        ev["editing"].update(p_holm=0.4, holm=[0.4, 2])
        ev["necessity"].update(p_holm=0.4, holm=[0.4, 2])
    if "without" in tests:
        ev["without"] = {"gain": 2.0 * ratio, "ceiling_gain": 2.0, "claim_gain": 1.23, "ratio": ratio,
                         "n_sites": 254, "diverged": False, "converged": True, "stopped": "plateau"}
    if "minimality" in tests:
        ev["minimality"] = {"editing": [{"site": h, "without_it": 1.23 if i in free else 1.0,
                                         "cost": 0.0 if i in free else 0.23, "free": i in free}
                                        for i, h in enumerate(heads)], "free_share": 0.05}
    ev["size_curve"] = {"editing": _curve(1.23, 16, [1, 4, 16, 64], [0.2, 1.3, 1.5, 1.9], worth), "n": 5,
                        "matched_layers": False}
    r.update(evidence=ev, tests_listed=list(tests), verdict="FALSIFIED", verdict_reason="The overall reason.",
             expect=expect)
    return r


def test_older_results_get_no_evidence_sections():
    text = render_markdown(make_result())
    assert "Holm" not in text
    for heading in ("Necessity (ablation)", "Editing without the location", "Minimality", "Size curve"):
        assert f"## {heading}" not in text


def test_overall_verdict_comes_first():
    r = with_evidence()
    r["tests"]["optimal"]["verdict"] = "SUPPORTED"
    lines = render_markdown(r).splitlines()
    assert lines[2] == "**Verdict: FALSIFIED** (no expectation stated)" and lines[4] == "The overall reason."
    assert "**The editing test** (its verdict: SUPPORTED;" in render_markdown(r)


@pytest.mark.parametrize("expect, matches, note", [
    ("FALSIFIED", True, "expected FALSIFIED: as expected"),
    ({"necessity": "FALSIFIED", "editing": "FALSIFIED"}, True,
     "expected editing FALSIFIED, necessity FALSIFIED: as expected"),          # the claim's order
    ({"necessity": "SUPPORTED", "editing": "FALSIFIED"}, False,
     "expected editing FALSIFIED, necessity SUPPORTED: NOT as expected (got necessity FALSIFIED)"),
])
def test_expectation_per_test(expect, matches, note):
    r = with_evidence(expect=expect)
    r["matches_expectation"] = matches
    assert render_markdown(r).splitlines()[2] == f"**Verdict: FALSIFIED** ({note})"


def test_one_test_with_a_verdict_shares_no_alpha():
    top = render_markdown(with_evidence(("editing", "without"))).split("\n## Claim\n")[0]
    assert _row(top, "editing")[6] == "—"
    assert "Only editing gives a verdict here" in top and "step-down" not in top


def test_full_null_p_and_resample_seed():
    sec = _section(render_markdown(with_evidence()), "Necessity (ablation)")
    assert _row(sec, "p-value (one-sided)")[1] == "0.2 (= 20/100)"
    assert _row(sec, "random drops >= claim's drop")[1] == "19 of 99"
    assert "(`resample` ablation, seed 3)" in sec
    assert "p = (1 + #{random drops >= claim's drop}) / (N + 1)" in sec


def test_without_near_one_does_not_need_the_location():
    sec = _section(render_markdown(with_evidence(ratio=0.95)), "Editing without the location")
    assert "reaches 95% of the ceiling (at least rho = 0.9): editing the behaviour does not need them" in sec
    sec = _section(render_markdown(with_evidence(ratio=0.5)), "Editing without the location")
    assert "part of the effect can be had without them" in sec


def test_minimality_with_no_free_site():
    sec = _section(render_markdown(with_evidence(free=())), "Minimality")
    assert "Editing: every site contributes: leaving any one out costs at least 5% of the claim's gain." in sec
    sec = _section(render_markdown(with_evidence(free=(0, 3))), "Minimality")
    r = make_result()
    assert f"Editing: `{r['location'][0]}` and `{r['location'][3]}` contribute nothing measurable" in sec


def test_size_curve_worth():
    sec = _section(render_markdown(with_evidence(worth=4)), "Size curve")
    assert "the claimed 16 heads are worth about 4 random heads (by editing)" in sec
    assert "less than random locations of its size (16)" in sec
    sec = _section(render_markdown(with_evidence(worth=None)), "Size curve")
    assert "the claimed 16 heads are worth more than the largest size tried, 64 random heads" in sec
    labels = [ln.split("|")[1].strip() for ln in sec.splitlines() if ln.startswith("| ")][1:]
    assert labels == ["1", "4", "16", "**16: the claimed heads**", "64"]


def test_evidence_renders_the_same_from_json(tmp_path):
    r = with_evidence()
    r["expect"] = {"necessity": "FALSIFIED", "editing": "FALSIFIED"}    # not in sorted order
    back = json.loads(json.dumps(r, sort_keys=True))
    assert render_markdown(back) == render_markdown(r)


def test_size_curve_axis_and_figures_deterministic(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    r = with_evidence()
    a = evidence_plots.draw_evidence_figures(r, tmp_path / "a")
    b = evidence_plots.draw_evidence_figures(json.loads(json.dumps(r, sort_keys=True)), tmp_path / "b")
    assert [p.name for p in a] == ["necessity_hist.png", "size_curve.png"]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert plt.get_fignums() == []
    scales = []
    real = evidence_plots.save_figure
    monkeypatch.setattr(evidence_plots, "save_figure",
                        lambda fig, path: (scales.append(fig.axes[0].get_xscale()), real(fig, path))[1])
    evidence_plots.plot_size_curve([("editing", r["evidence"]["size_curve"]["editing"])], "m", tmp_path / "l.png")
    evidence_plots.plot_size_curve([("editing", _curve(1.0, 2, [1, 2, 3], [0, 1, 2], 3))], "m", tmp_path / "s.png")
    assert scales == ["log", "linear"]                            # 1..64 spans more than 8x; 1..3 does not
    empty = {"rows": [], "claim": None, "claim_size": 2, "worth": None, "largest": 3}
    assert evidence_plots.plot_size_curve([("editing", empty)], "m", tmp_path / "e.png").read_bytes()[:8] == PNG_MAGIC
    nan = evidence_plots.plot_necessity_histogram([None, 1.0], None, "m", tmp_path / "n.png", location_size=2)
    assert nan.read_bytes()[:8] == PNG_MAGIC
