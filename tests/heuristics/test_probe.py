"""ITI probing (heuristics/probe.py) on planted signals, on the real data's splits, end to end on a
tiny model, and its heatmap (heuristics.probe.plot_probe_heatmap)."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from loccheck.data.behavior import load_behavior
from loccheck.errors import LoccheckError, LoccheckWarning
from loccheck.locations import HeadLoc
from loccheck.models.activations import probe_examples
from loccheck.heuristics.probe import ProbeResult, probe_heads

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def planted(n, rng, *, shape=(3, 4, 8), at=(1, 2), shift=6.0):
    """Gaussian activations; head `at` gets +shift on coordinate 0 for label 1."""
    y = np.tile([0, 1], n // 2)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    x[y == 1, at[0], at[1], 0] += shift
    return x, y


def test_planted_head_ranks_first():
    rng = np.random.default_rng(0)
    (tx, ty), (vx, vy) = planted(200, rng), planted(200, rng)
    r = probe_heads(tx, ty, vx, vy)
    assert r.val_accuracy.shape == r.train_accuracy.shape == (3, 4)
    assert (r.n_train, r.n_val) == (200, 200)
    best, acc = r.ranked()[0]
    assert best == HeadLoc(1, 2) and acc > 0.95 and r.accuracy_of(best) == acc
    others = np.delete(r.val_accuracy.ravel(), 1 * 4 + 2)
    assert np.all(np.abs(others - 0.5) < 0.15) and abs(others.mean() - 0.5) < 0.05
    assert r.top_k(1) == [HeadLoc(1, 2)]
    # deterministic
    np.testing.assert_array_equal(probe_heads(tx, ty, vx, vy).val_accuracy, r.val_accuracy)


def test_probes_are_scored_on_validation_only():
    """A head that separates train but not validation gets chance validation accuracy."""
    rng = np.random.default_rng(1)
    tx, ty = planted(100, rng, at=(0, 0))
    vx, vy = planted(100, rng, at=(2, 3))
    r = probe_heads(tx, ty, vx, vy)
    assert r.train_accuracy[0, 0] > 0.95 and r.val_accuracy[0, 0] < 0.75
    assert r.ranked()[0][0] != HeadLoc(0, 0)


def _result(acc) -> ProbeResult:
    acc = np.asarray(acc, float)
    return ProbeResult(acc, acc, 10, 10)


def test_ranking_ties_and_top_k_order():
    r = _result([[0.5, 0.9, 0.7],
                 [0.9, 0.7, 0.6]])
    assert r.ranked() == [(HeadLoc(0, 1), 0.9), (HeadLoc(1, 0), 0.9), (HeadLoc(0, 2), 0.7),
                          (HeadLoc(1, 1), 0.7), (HeadLoc(1, 2), 0.6), (HeadLoc(0, 0), 0.5)]
    assert r.top_k(1) == [HeadLoc(0, 1)]
    assert r.top_k(3) == [HeadLoc(0, 1), HeadLoc(0, 2), HeadLoc(1, 0)]    # sorted by (layer, head)
    assert r.top_k(4) == [HeadLoc(0, 1), HeadLoc(0, 2), HeadLoc(1, 0), HeadLoc(1, 1)]
    assert r.top_k(6) == sorted(HeadLoc(l, h) for l in range(2) for h in range(3))
    assert r.top_k(np.int64(2)) == [HeadLoc(0, 1), HeadLoc(1, 0)]
    for k in (0, 7, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"`k` must be an int in \[1, 6\]"):
            r.top_k(k)
    with pytest.raises(ValueError, match="L2H0 is outside the probed heads"):
        r.accuracy_of(HeadLoc(2, 0))


def test_input_validation():
    rng = np.random.default_rng(2)
    x, y = planted(20, rng)
    with pytest.raises(LoccheckError, match=r"^probing needs both labels in the validation split, but it has "
                                            r"no label 1 \(true answer\) among its 10 examples$"):
        probe_heads(x, y, x[:10], np.zeros(10, int))
    with pytest.raises(LoccheckError, match=r"train split, .* no label 0 \(false answer\) among its 20 examples"):
        probe_heads(x, np.ones(20, int), x, y)
    with pytest.raises(ValueError, match=r"`train_y` must have shape \(20,\)"):
        probe_heads(x, y[:5], x, y)
    with pytest.raises(ValueError, match="`val_y` must contain only labels 0 and 1"):
        probe_heads(x, y, x, y * 2)
    with pytest.raises(ValueError, match="`val_x` must have shape"):
        probe_heads(x, y, x[:, 0], y)
    with pytest.raises(ValueError, match="must agree on"):
        probe_heads(x, y, x[:, :2], y)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="must be finite"):
        probe_heads(bad, y, x, y)


def test_nonconvergence_is_one_loccheck_warning():
    rng = np.random.default_rng(3)
    x, y = planted(40, rng, shape=(2, 2, 8), at=(0, 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe_heads(x * 1e3, y, x, y, max_iter=1)
    assert [w.category for w in caught] == [LoccheckWarning]
    assert "4 of 4 head probes did not converge in max_iter=1" in str(caught[0].message)


def test_localize_does_not_import_torch():
    code = ("import sys, numpy as np, loccheck.heuristics.probe as L\n"
            "x = np.random.default_rng(0).normal(size=(8, 1, 1, 2)); y = np.array([0, 1] * 4)\n"
            "L.probe_heads(x, y, x, y)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- examples from BehaviorData

def test_probe_examples_never_touch_test_questions(data_dir):
    d = load_behavior(dataset="truthfulqa", path=str(data_dir / "TruthfulQA.csv"), base_dir=None,
                      max_questions=30)
    train, val = probe_examples(d)
    used = {g for g, _, _ in train + val}
    assert used and not used & set(d.groups["test"])
    assert {g for g, _, _ in train} == set(d.groups["train"])
    assert {g for g, _, _ in val} == set(d.groups["validation"])
    g, question, answer, label = d.labelled("train")[0]
    assert train[0] == (g, f"Q: {question} A: {answer}", label) and label == 1
    assert {y for *_, y in train} == {y for *_, y in val} == {0, 1}


def test_heuristic_data_has_no_test_split(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}) + "\n"
                         for i in range(5)))
    d = load_behavior(dataset="jsonl", path=str(f), base_dir=None)
    seen = d.without_test()
    assert not hasattr(seen, "test") and set(seen.groups) == {"train", "validation"}
    assert not set(seen.answers) & set(d.groups["test"])
    with pytest.raises(ValueError, match="never see the test questions"):
        seen.labelled("test")
    assert probe_examples(seen) == probe_examples(d)     # the same examples, by construction


@pytest.mark.slow
def test_end_to_end_on_a_tiny_llama(tmp_path):
    """JSONL -> probe_examples -> head activations -> probes. True answers end in 'T', false
    ones in 'F': the last token's own value vector carries the label, so some head must
    separate it on the validation questions."""
    from loccheck.testing import VOCAB, tiny_model
    from loccheck.models.activations import collect_head_activations
    from loccheck.models import get_adapter

    class CharTokenizer:
        pad_token_id = 0

        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": [[1] + [3 + ord(c) % (VOCAB - 3) for c in t] for t in texts]}

    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"question {i}?", "chosen": f"yes {j}T",
                                     "rejected": f"no {j}F", "group": f"q{i}"}) + "\n"
                         for i in range(30) for j in range(2)))
    d = load_behavior(dataset="jsonl", path=str(f), base_dir=None)
    train, val = probe_examples(d)
    model = tiny_model("llama")
    adapter = get_adapter(model)
    tok = CharTokenizer()
    tx = collect_head_activations(model, adapter, tok, [t for _, t, _ in train])
    vx = collect_head_activations(model, adapter, tok, [t for _, t, _ in val])
    r = probe_heads(tx, [y for *_, y in train], vx, [y for *_, y in val])
    assert (r.n_train, r.n_val) == (len(train), len(val)) == (72, 24)
    assert r.ranked()[0][1] > 0.9 and len(r.top_k(3)) == 3


# ---------------------------------------------------------------- heatmap

def test_probe_heatmap_is_deterministic_and_valid(tmp_path):
    import matplotlib.pyplot as plt
    from loccheck.heuristics.probe import plot_probe_heatmap

    rng = np.random.default_rng(0)
    acc = 0.5 + 0.3 * rng.random((30, 9))
    acc[3, 4] = np.nan   # drawn grey, not an error
    claimed = [HeadLoc(int(i // 9), int(i % 9)) for i in rng.choice(270, 16, replace=False)]
    a = plot_probe_heatmap(acc, claimed, tmp_path / "a.png")
    b = plot_probe_heatmap(acc, claimed, tmp_path / "sub" / "b.png")
    assert a == tmp_path / "a.png" and a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[:8] == PNG_MAGIC and a.stat().st_size > 5000
    assert not plt.get_fignums()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    assert plot_probe_heatmap(acc[:2, :4], [], tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match=r"\['L30H0'\] are outside the 30 x 9"):
        plot_probe_heatmap(acc, [HeadLoc(30, 0)], tmp_path / "d.png")
    with pytest.raises(ValueError, match="non-empty \\(n_layers, n_heads\\)"):
        plot_probe_heatmap(acc[0], claimed, tmp_path / "e.png")
