"""The Haar null of subspace claims: each draw is an orthonormal basis of a uniformly random
subspace, reproducible from (width, dim, seed, draw) alone."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from loccheck.locations import SubspaceLoc
from loccheck.stats.null import haar_basis, sample_null_subspaces


@pytest.mark.parametrize("width, dim", [(16, 1), (16, 3), (7, 6)])
def test_a_draw_is_orthonormal_and_reproducible(width, dim):
    U = haar_basis(width, dim, seed=3, draw=5)
    assert U.shape == (dim, width)
    np.testing.assert_allclose(U @ U.T, np.eye(dim), atol=1e-12)
    assert np.array_equal(U, haar_basis(width, dim, seed=3, draw=5))
    assert not np.allclose(U, haar_basis(width, dim, seed=3, draw=6))
    assert not np.allclose(U, haar_basis(width, dim, seed=4, draw=5))


@pytest.mark.parametrize("width, dim", [(16, 1), (16, 3), (40, 2)])
def test_draws_are_uniform_their_projection_follows_its_beta_law(width, dim):
    """For a uniformly random k-dimensional subspace of R^d, |P e1|^2 ~ Beta(k/2, (d-k)/2), and a
    uniformly random basis points either way. The QR of a Gaussian matrix without its sign fix
    spans the right subspaces (its Beta test passes, p > 0.8) but not with uniform bases: its
    first vector's first coordinate is always negative (the sign test's p is 0)."""
    n = 4000
    proj = np.array([np.sum(haar_basis(width, dim, seed=0, draw=i)[:, 0] ** 2) for i in range(n)])
    law = stats.beta(dim / 2, (width - dim) / 2)
    assert stats.kstest(proj, law.cdf).pvalue > 1e-3
    assert abs(proj.mean() - dim / width) < 4 * law.std() / np.sqrt(n)
    # and the basis vectors point either way along e1 equally often
    signs = np.array([np.sign(haar_basis(width, dim, seed=0, draw=i)[0, 0]) for i in range(n)])
    assert stats.binomtest(int((signs > 0).sum()), n).pvalue > 1e-3


@pytest.mark.parametrize("dim", [0, 16, 17])
def test_a_subspace_must_be_smaller_than_the_stream(dim):
    with pytest.raises(ValueError, match="`dim` must be in"):
        haar_basis(16, dim, seed=0, draw=0)


def test_the_null_of_a_subspace_is_haar_draws_at_its_layer():
    claim = SubspaceLoc(12, 2, "sha256:" + "a" * 64)
    nulls = sample_null_subspaces(claim, n=3, seed=7)
    assert nulls == [(SubspaceLoc(12, 2, f"haar:7:{i}"),) for i in range(3)]
    assert [str(n[0]) for n in nulls] == ["L12S2@haar:7:0", "L12S2@haar:7:1", "L12S2@haar:7:2"]
    assert nulls[:2] == sample_null_subspaces(claim, n=2, seed=7)      # more draws keep the earlier
    with pytest.raises(ValueError):
        sample_null_subspaces(claim, n=0, seed=7)
