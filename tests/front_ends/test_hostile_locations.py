"""Hostile and broken residual-stream and neuron locations, through `loccheck verify`: a basis
file of the wrong width, rank-deficient, non-finite or unreadable; latents outside the
dictionary; neurons outside the MLP's width; a subspace of dimension 0 or of the stream's whole
width; layers outside the model; a file that changed since the claim named its sha256; draws
and edit methods that do not fit the kind. Each is one line naming the file and the field,
exit 2, nothing written (tests/front_ends/test_hostile.py's `run_bad`); the readers' messages
in detail are in tests/data/test_bases.py."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tests.front_ends.test_hostile import BASE, env, run_bad, write_claim  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow   # bad input through the CLI, with a tiny torch model

WIDTH = 32   # the known Llama's residual stream; its MLPs have 64 hidden units, 2 layers


def _files(tmp):
    rng = np.random.default_rng(0)
    good = rng.standard_normal((2, WIDTH))
    np.save(tmp / "good.npy", good)
    np.save(tmp / "wide.npy", rng.standard_normal((1, WIDTH + 1)))
    np.save(tmp / "columns.npy", good.T)
    np.save(tmp / "dependent.npy", np.vstack([good, good[0] + 2 * good[1]]))
    nan = good.copy()
    nan[1, 3] = np.nan
    np.save(tmp / "nan.npy", nan)
    np.save(tmp / "empty.npy", np.zeros((0, WIDTH)))
    np.save(tmp / "whole.npy", rng.standard_normal((WIDTH, WIDTH)))
    (tmp / "garbage.npy").write_bytes(b"\x93NUMPY this is not an array")
    np.savez(tmp / "sae.npz", W_dec=rng.standard_normal((16, WIDTH)).astype(np.float32))
    return hashlib.sha256((tmp / "good.npy").read_bytes()).hexdigest()


SUBSPACE = "location: {{subspace: {{layer: {layer}, basis: {basis}{more}}}}}"
LATENTS = "location: {{latents: {latents}, dictionary: {{path: sae.npz, key: {key}, layer: {layer}}}}}"

CASES = {  # id: (location line, substrings the error line must contain besides the file)
    "wrong-width": (SUBSPACE.format(layer=1, basis="wide.npy", more=""), ["location.subspace.basis", "wide.npy", "33"]),
    "transposed": (SUBSPACE.format(layer=1, basis="columns.npy", more=""), ["location.subspace.basis", "transpose"]),
    "rank-deficient": (SUBSPACE.format(layer=1, basis="dependent.npy", more=""), ["location.subspace.basis", "span 2 dimension(s), not 3"]),
    "non-finite": (SUBSPACE.format(layer=1, basis="nan.npy", more=""), ["location.subspace.basis", "nan.npy", "1 "]),
    "unreadable": (SUBSPACE.format(layer=1, basis="garbage.npy", more=""), ["location.subspace.basis", "garbage.npy"]),
    "missing-file": (SUBSPACE.format(layer=1, basis="nowhere.npy", more=""), ["location.subspace.basis", "nowhere.npy"]),
    "dimension-0": (SUBSPACE.format(layer=1, basis="empty.npy", more=""), ["location.subspace.basis", "empty.npy"]),
    "whole-width": (SUBSPACE.format(layer=1, basis="whole.npy", more=""), ["location.subspace.basis", "whole residual stream"]),
    "layer-outside": (SUBSPACE.format(layer=2, basis="good.npy", more=""), ["location.subspace.layer", "2 layers"]),
    "sha256-changed": (SUBSPACE.format(layer=1, basis="good.npy", more=", sha256: " + "ab" * 32),
                       ["location.subspace.sha256", "changed"]),
    "latent-outside": (LATENTS.format(latents="[3, 16]", key="W_dec", layer=1), ["location.latents", "16"]),
    "dictionary-key": (LATENTS.format(latents="[3]", key="W_enc", layer=1), ["location.dictionary.key", "W_dec"]),
    "dictionary-layer": (LATENTS.format(latents="[3]", key="W_dec", layer=5), ["location.dictionary.layer"]),
    "latents-without-dictionary": ("location: {latents: [3]}", ["location.latents", "dictionary"]),
    "neuron-outside-width": ("location: {sites: [L1N64]}", ["location.sites[0]", "64 MLP hidden units"]),
    "neuron-outside-layers": ("location: {sites: [L0N3, L2N3]}", ["location.sites[1]", "2 layers"]),
    "mixed-kinds": ("location: {sites: [L0N3, L1H2]}", ["location.sites[1]", "one kind"]),
    "subspace-as-site": ("location: {sites: ['L1S1@haar:0:1']}", ["location.sites[0]", "subspace:"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_location_is_one_line(env, capsys, case):
    sha = _files(env["tmp"])
    line, needles = CASES[case]
    text = env["text"].replace(BASE, line.replace("SHA", sha))
    path = write_claim(env, text)
    message = run_bad(env, capsys, path)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message


OTHER = {  # id: (location line, replace (old, new) in the claim, substrings)
    "haar-for-heads": (BASE, ("{n: 19, seed: 0", "{n: 19, seed: 0, draw: haar"), ["random_locations.draw", "head"]),
    "sites-for-a-subspace": (SUBSPACE.format(layer=1, basis="good.npy", more=""),
                             ("{n: 19, seed: 0", "{n: 19, seed: 0, draw: sites"), ["random_locations.draw", "haar"]),
    "iti-on-a-subspace": (SUBSPACE.format(layer=1, basis="good.npy", more=""),
                          ("edits: [{", "edits: [{method: iti}, {"), ["edits[0].method", "subspace"]),
    "rome-on-neurons": ("location: {sites: [L1N3]}", ("edits: [{", "edits: [{method: rome}, {"),
                        ["edits[0].method", "neuron"]),
}


@pytest.mark.parametrize("case", list(OTHER))
def test_a_draw_or_method_that_does_not_fit_the_kind_is_one_line(env, capsys, case):
    _files(env["tmp"])
    line, (old, new), needles = OTHER[case]
    text = env["text"].replace(BASE, line)
    assert old in text
    path = write_claim(env, text.replace(old, new, 1))
    message = run_bad(env, capsys, path)
    for needle in needles:
        assert needle in message, message


def test_a_good_subspace_with_its_sha256_passes_every_check(env):
    """The control: the same file named with its true sha256 passes every check made before
    fitting, and its location is named by that sha256."""
    from loccheck.claim import load_claim
    from loccheck.locations import SubspaceLoc
    from loccheck.run.verify import inspect

    sha = _files(env["tmp"])
    text = env["text"].replace(BASE, SUBSPACE.format(layer=1, basis="good.npy", more=f", sha256: {sha}"))
    inputs = inspect(load_claim(write_claim(env, text)), out_dir=None, cache_dir=env["tmp"] / "cache")
    assert inputs.residual.location == (SubspaceLoc(1, 2, f"sha256:{sha}"),)
