"""Issue 3 end to end on a tiny known-answer model: heads from the probing heuristic, the ITI
edit beside the optimal one, and `loccheck localize`."""
import pytest
import json

import numpy as np
from loccheck.testing import claim_text
from loccheck.claim import load_claim
from loccheck.cli import main
from loccheck.run.verify import verify

pytestmark = pytest.mark.slow   # fits edits on a tiny model (torch)

PROBE = "heuristic: {method: probe, top_k: 1}\n"


def _probe_claim(known_llama, tmp_path, extra=""):
    model_dir, pairs = known_llama
    text = claim_text(model_dir, pairs, ["L0H0"], n=4, alpha=0.2, stop="full").replace(
        "location: {sites: [L0H0]}", "location: {from_heuristic: true}")
    path = tmp_path / "probed.yaml"
    path.write_text(text + PROBE + extra)
    return path


def test_heads_from_the_heuristic_and_both_edits(known_llama, tmp_path):
    path = _probe_claim(known_llama, tmp_path)
    text = path.read_text().replace("edits: [{max_epochs: 3", "edits: [{method: iti, alphas: [0, 4, 8]}, {max_epochs: 3")
    path.write_text(text)
    result = verify(load_claim(path), out_dir=tmp_path / "out", progress=False)

    probe = result.payload["heuristic_evidence"]
    acc = np.array(probe["val_accuracy"])
    assert acc.shape == (2, 4)
    best = np.flatnonzero(acc.ravel() == acc.max())[0]               # ties: lowest (layer, head)
    assert result.location == [f"L{best // 4}H{best % 4}"] == probe["selected"]
    assert set(result.tests) == {"optimal", "iti"}
    # the first edit listed gives the verdict
    assert result.payload["primary_method"] == "iti" and result.verdict == result.tests["iti"]["verdict"]
    iti = [e for e in result.edits if e["method"] == "iti"]
    assert [e["role"] for e in iti] == ["claim", "ceiling"] + ["random"] * 4
    for e in iti:
        assert e["alpha"] in (0, 4, 8) and e["n_params"] == 0
        chosen = max(e["validation_by_alpha"].items(), key=lambda kv: (kv[1], -float(kv[0])))
        assert float(chosen[0]) == e["alpha"]
    iti_nulls = [e["location"] for e in iti if e["role"] == "random"]
    opt_nulls = [e["location"] for e in result.edits if e["method"] == "optimal" and e["role"] == "random"]
    assert iti_nulls == opt_nulls                                     # the same random heads
    out = tmp_path / "out"
    for name in ("methods.png", "probe_heatmap.png", "null_hist.png", "loss_curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "## The same heads under each edit" in report and "## The heuristic: probing" in report
    assert "## The ITI edits" in report and "## Convergence of the optimal edits" in report
    assert json.loads((out / "result.json").read_text())["tests"]["iti"]["p_value"] == \
        result.tests["iti"]["p_value"]


def test_localize_pins_the_probed_heads(known_llama, tmp_path, capsys):
    path = _probe_claim(known_llama, tmp_path)
    out = tmp_path / "pinned.yaml"
    assert main(["localize", str(path), "--top-k", "2", "--out", str(out)]) == 0
    pinned = load_claim(out)
    assert not pinned.location.from_heuristic and len(pinned.location.sites) == 2
    assert pinned.heuristic.method == "probe" and pinned.heuristic.top_k == 2
    assert set(pinned.heuristic.probe_accuracies) == set(pinned.location.sites)
    assert str(out) in capsys.readouterr().out
    # Verifying the pinned claim re-runs the probes and finds the same heads.
    result = verify(pinned, write_report=False, progress=False)
    evidence = result.payload["heuristic_evidence"]
    assert evidence["pinned_heads_reselected"] is True
    assert sorted(evidence["claimed_accuracy"].values()) == sorted(pinned.heuristic.probe_accuracies.values())
