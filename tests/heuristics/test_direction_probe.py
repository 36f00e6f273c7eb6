"""The direction_probe heuristic (loccheck.heuristics.direction_probe): its numeric core on planted
activations, its basis files, and the heuristic end to end on a tiny Llama.

Known answers: activations whose true and false answers differ along a planted unit vector v
give the direction v (to float rounding) and the accuracy the planted projections say; a
second planted direction w, orthogonal to v, along which the pairs' differences vary, is the
second basis vector. In `known_direction_model(v)` the residual stream never holds v, so every
direction found there is orthogonal to v.
"""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from pydantic import ValidationError

from loccheck.errors import LoccheckError
from loccheck.heuristics import HEURISTICS
from loccheck.heuristics.direction_probe import (DirectionProbeSection, direction_file_bytes,
                                                 mass_mean_directions)
from loccheck.locations import SubspaceLoc

WIDTH = 32
H = HEURISTICS["direction_probe"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _orthonormal(rows):
    return np.linalg.qr(rows.T)[0].T


def _planted(seed=0, n=40):
    """(v, w, train_true, train_false, base): pairs that share a random base activation
    orthogonal to v and w; the true answer adds +2v, the false one -2v, and pair i's
    difference also has +-w (alternating, so its mean is 0)."""
    rng = np.random.default_rng(seed)
    v, w = _orthonormal(rng.standard_normal((2, WIDTH)))
    base = rng.standard_normal((n, WIDTH))
    base -= np.outer(base @ v, v) + np.outer(base @ w, w)
    b = np.where(np.arange(n) % 2 == 0, 0.5, -0.5)
    return v, w, base + 2 * v + np.outer(b, w), base - 2 * v - np.outer(b, w), base


def test_the_planted_direction_and_its_exact_accuracy():
    v, w, tt, tf, base = _planted()
    # validation: 3 of 4 true answers above the threshold (0), 2 of 4 false answers at or below it
    vt = base[:4] + np.outer([1.0, 0.5, 3.0, -1.0], v)
    vf = base[4:8] + np.outer([-1.0, 0.25, -2.0, 0.5], v)
    fit = mass_mean_directions(tt, tf, vt, vf, 1)
    np.testing.assert_allclose(fit.direction, v, atol=1e-12)
    assert fit.basis.shape == (1, WIDTH)
    assert abs(fit.threshold) < 1e-12                       # the means project to +2 and -2
    assert fit.train_accuracy == 1.0
    assert fit.val_accuracy == 5 / 8                          # exact: 3 true right, 2 false right
    np.testing.assert_allclose(fit.val_true, [1.0, 0.5, 3.0, -1.0], atol=1e-12)


def test_a_second_dimension_is_the_planted_spread_of_the_differences():
    v, w, tt, tf, _ = _planted(seed=1)
    fit = mass_mean_directions(tt, tf, tt, tf, 2)
    np.testing.assert_allclose(fit.basis[0], v, atol=1e-12)
    np.testing.assert_allclose(np.abs(fit.basis[1] @ w), 1.0, atol=1e-12)
    np.testing.assert_allclose(fit.basis @ fit.basis.T, np.eye(2), atol=1e-12)
    top = np.abs(fit.basis[1]).argmax()
    assert fit.basis[1, top] > 0                               # the sign convention
    # a smaller dimension's basis is a prefix of a larger one's
    np.testing.assert_array_equal(mass_mean_directions(tt, tf, tt, tf, 1).basis[0], fit.basis[0])
    with pytest.raises(LoccheckError, match=r"top_k 3 asks for 2 direction\(s\) .* span only 1 more") as err:
        mass_mean_directions(tt, tf, tt, tf, 3)                # the differences span v and w only
    assert err.value.key == "heuristic.top_k"


def test_numeric_core_input_validation():
    v, w, tt, tf, _ = _planted()
    with pytest.raises(ValueError, match="paired non-empty"):
        mass_mean_directions(tt, tf[:3], tt, tf, 1)
    with pytest.raises(ValueError, match="`val_false` must be a non-empty"):
        mass_mean_directions(tt, tf, tt, tf[:, :3], 1)
    for k in (0, WIDTH, True, 1.0):
        with pytest.raises(ValueError, match=r"`k` must be an int in \[1, 31\]"):
            mass_mean_directions(tt, tf, tt, tf, k)
    with pytest.raises(LoccheckError, match="mean activations are equal"):
        mass_mean_directions(tt, tt, tt, tf, 1)
    bad = tt.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        mass_mean_directions(bad, tf, tt, tf, 1)


def test_the_basis_file_has_the_sha256_its_id_names(tmp_path):
    from loccheck.data.bases import read_basis
    from loccheck.heuristics.direction_probe import basis_id

    v, w, tt, tf, _ = _planted()
    basis = mass_mean_directions(tt, tf, tt, tf, 2).basis
    raw = direction_file_bytes(basis)
    np.testing.assert_array_equal(np.load(io.BytesIO(raw)), basis)
    assert basis_id(basis) == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert np.load(io.BytesIO(direction_file_bytes(basis.astype(np.float32)))).dtype == np.float64
    path = tmp_path / "direction.npy"
    path.write_bytes(raw)
    read = read_basis(path, key=None, width=WIDTH, field="location.subspace.basis")
    assert "sha256:" + read.sha256 == basis_id(basis)
    np.testing.assert_allclose(read.vectors, basis, atol=1e-12)   # already orthonormal: read as it is
    with pytest.raises(ValueError, match="non-empty"):
        direction_file_bytes(np.zeros((0, WIDTH)))


# ---------------------------------------------------------------- the heuristic on a tiny Llama

@pytest.fixture(scope="module")
def torch_one_thread(one_torch_thread):
    """Tiny models run one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def known(torch_one_thread, tmp_path_factory):
    from loccheck.data.behavior import load_behavior
    from loccheck.models import get_adapter
    from loccheck.models.loading import LoadedModel
    from loccheck.testing import char_tokenizer, known_direction_model, planted_direction, write_pairs

    v = planted_direction(WIDTH, 0)
    model = known_direction_model(v, n_layers=2)
    info = {"sha256": "test", "name": "test", "commit": None, "dtype": "float32", "device": "cpu"}
    loaded = LoadedModel(model, char_tokenizer(), info, get_adapter(model))
    path = write_pairs(tmp_path_factory.mktemp("direction") / "pairs.jsonl", n_questions=24)
    data = load_behavior(dataset="jsonl", path=str(path), base_dir=None, split=(0.5, 0.25, 0.25))
    return v, loaded, data.without_test(), path


def _propose(known, tmp_path, **fields):
    _, loaded, data, _ = known
    return H.propose(DirectionProbeSection(method="direction_probe", **fields), loaded, data, tmp_path)


@pytest.mark.slow
def test_the_proposal_is_one_subspace_of_the_best_layer(known, tmp_path):
    v, loaded, data, _ = known
    proposal = _propose(known, tmp_path, top_k=3)
    raw = proposal.raw
    assert raw.layers == (0, 1) and raw.k == 3 and raw.n_train == len(data.train) == 12
    acc = raw.val_accuracy
    best = 0 if acc[0] >= acc[1] else 1
    assert raw.best_layer == best
    assert [s.layer for s, _ in proposal.ranked] == ([0, 1] if best == 0 else [1, 0])
    assert [a for _, a in proposal.ranked] == sorted(acc.tolist(), reverse=True)
    (site,) = proposal.top(3)
    assert site == SubspaceLoc(best, 3, site.basis) and site == proposal.ranked[0][0]
    assert set(raw.bases) == {s.basis for s, _ in proposal.ranked}
    for s, _ in proposal.ranked:
        vectors = raw.bases[s.basis]
        assert vectors.shape == (3, WIDTH) and vectors.dtype == np.float64
        np.testing.assert_allclose(vectors @ vectors.T, np.eye(3), atol=1e-12)
        assert s.basis == "sha256:" + hashlib.sha256(direction_file_bytes(vectors)).hexdigest()
        assert np.abs(vectors @ v).max() < 1e-4            # the stream never holds v
        assert raw.basis_of(s) is not None and proposal.score(s) == raw.fit(s.layer).val_accuracy
    (one,) = proposal.top(1)                                  # a smaller subspace: the prefix
    np.testing.assert_array_equal(raw.basis_of(one), raw.bases[site.basis][:1])
    assert one.dim == 1 and one.layer == best and SubspaceLoc.parse(str(one)) == one
    with pytest.raises(ValueError, match=r"`k` must be an int in \[1, 3\]"):
        proposal.top(4)
    with pytest.raises(KeyError):
        proposal.score(SubspaceLoc(best, 1, "haar:0:0"))


@pytest.mark.slow
def test_the_proposal_is_deterministic_and_layers_restrict_it(known, tmp_path):
    a, b = _propose(known, tmp_path, top_k=2), _propose(known, tmp_path, top_k=2)
    assert a.ranked == b.ranked and a.top(2) == b.top(2)
    assert all(direction_file_bytes(a.raw.bases[k]) == direction_file_bytes(b.raw.bases[k]) for k in a.raw.bases)
    one = _propose(known, tmp_path, layers=[1])
    assert [s.layer for s, _ in one.ranked] == [1] and one.top(1)[0].layer == 1
    assert one.ranked[0][1] == a.raw.fit(1).val_accuracy    # layer 1's direction does not depend on layer 0's


@pytest.mark.slow
def test_the_residual_stream_read_is_the_models_own(known):
    import torch

    from loccheck.heuristics.direction_probe import residual_last_token
    from loccheck.models import get_adapter
    from loccheck.testing import tiny_model, token_pairs

    model = tiny_model("llama", n_layers=3)
    adapter = get_adapter(model)
    seqs = [list(p.prompt) + list(p.chosen) for p in token_pairs(seed=2, n=5)]
    acts = residual_last_token(model, adapter, seqs, [0, 1], pad_id=0, batch_size=2)
    assert acts.shape == (5, 2, WIDTH) and acts.dtype == np.float32
    assert not any(b._forward_hooks for b in adapter.blocks)   # none left attached
    for i, seq in enumerate(seqs):
        with torch.no_grad():
            hidden = model(torch.tensor([seq]), output_hidden_states=True).hidden_states
        for row, layer in enumerate([0, 1]):          # hidden_states[l + 1]: after block l (not the last: normed)
            # a padded batch against one sequence: float32 rounding at the stream's scale (its
            # entries reach 100 here; AVX2 kernels differ by 5e-5 on an entry near 1)
            want = hidden[layer + 1][0, -1].numpy()
            np.testing.assert_allclose(acts[i, row], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.slow
def test_bad_input_is_one_line_about_its_field(known, tmp_path):
    from loccheck.data.behavior import load_behavior

    with pytest.raises(LoccheckError, match=r"^heuristic.layers: layer 2 is outside the model: it has 2 layers") as err:
        _propose(known, tmp_path, layers=[2])
    assert err.value.key == "heuristic.layers"
    with pytest.raises(LoccheckError, match=f"top_k {WIDTH} is not below the residual stream's width") as err:
        _propose(known, tmp_path, top_k=WIDTH)
    assert err.value.key == "heuristic.top_k"
    with pytest.raises(LoccheckError, match=r"top_k 13 asks for 12 direction\(s\).*12 train pairs") as err:
        _propose(known, tmp_path, top_k=13)                   # 12 pairs' differences span 12 directions at most
    assert err.value.key == "heuristic.top_k"
    for layers in ([], [0, 0]):
        with pytest.raises(ValidationError):
            DirectionProbeSection(method="direction_probe", layers=layers)
    _, loaded, _, path = known
    no_val = load_behavior(dataset="jsonl", path=str(path), base_dir=None, split=(0.5, 0.0, 0.5)).without_test()
    with pytest.raises(LoccheckError, match="needs validation pairs") as err:
        H.propose(DirectionProbeSection(method="direction_probe"), loaded, no_val, tmp_path)
    assert err.value.key == "behavior.split"


@pytest.mark.slow
def test_evidence_pinning_report_and_figures(known, tmp_path):
    import matplotlib.pyplot as plt

    section = DirectionProbeSection(method="direction_probe", top_k=2)
    proposal = H.propose(section, known[1], known[2], tmp_path)
    location = proposal.top(2)
    evidence = json.loads(json.dumps(H.evidence(section, proposal, location, False), allow_nan=False))
    raw = proposal.raw
    assert evidence["k"] == 2 and evidence["best_layer"] == raw.best_layer == evidence["claimed_layer"]
    assert evidence["val_accuracy"] == raw.val_accuracy.tolist() and evidence["selected"] == str(location[0])
    proj = evidence["projections"]
    assert len(proj["val_true"]) == len(proj["val_false"]) == raw.n_val == 6
    t = proj["threshold"]
    right = sum(p > t for p in proj["val_true"]) + sum(p <= t for p in proj["val_false"])
    assert right / 12 == evidence["claimed_accuracy"]         # the histogram shows the accuracy reported
    other = SubspaceLoc(1 - raw.best_layer, 1, "haar:0:0")
    pinned_ev = H.evidence(section, proposal, (other,), True)
    assert pinned_ev["pinned_subspace_reselected"] is False and pinned_ev["claimed_layer"] == other.layer
    pinned, why = H.pinned(proposal, location, {str(location[0]): proposal.score(location[0])})
    assert pinned == {"layer_accuracies": {"L0": raw.val_accuracy[0], "L1": raw.val_accuracy[1]}}
    assert "validation pairs" in why
    DirectionProbeSection(method="direction_probe", **pinned)   # what localize writes validates
    r = {"heuristic_evidence": evidence, "location": [str(location[0])]}
    lines = "\n".join(H.report_lines(r))
    assert "## The heuristic: direction probe" in lines and f"L{raw.best_layer} (claimed)" in lines
    H.report_figures(r, tmp_path)
    for name in ("direction_probe_layers.png", "direction_probe_projections.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    first = (tmp_path / "direction_probe_layers.png").read_bytes()
    H.report_figures(r, tmp_path)
    assert (tmp_path / "direction_probe_layers.png").read_bytes() == first   # deterministic
    assert not plt.get_fignums()
