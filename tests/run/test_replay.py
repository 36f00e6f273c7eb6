"""Evidence bundles as a paper's repository uses them (issue 26): a claim about a tiny model is
recorded with `loccheck verify --evidence`, then replayed by pytest with the plugin in a process
where torch cannot be imported and the model folder is gone; changed claims, records and data
fail with one line; an audit refits a sample of the bundle's edits on the restored model, and
fails on a model with one weight changed.

The claim is the planted one of tests/end_to_end/test_known_necessity.py: a 4 x 16-head Llama
whose only live head is L2H5, pairs oriented by it, null seed 3 (editing p = 1/20, SPECIFIC on
this short budget; necessity p = 0.02, Holm 0.04: SUPPORTED), with the whole model without the
head beside them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from loccheck.cli import main
from loccheck.locations import HeadLoc

pytestmark = pytest.mark.slow   # records on a tiny torch model

LIVE = HeadLoc(2, 5)
BUDGET = "{max_epochs: 2, batch_size: 4, learning_rate: 0.05, ceiling_learning_rate: 0.05, init_std: 0.1}"
SPLIT = "{train: 0.5, validation: 0.0, test: 0.5, seed: 0}"

# Run in the replaying process before pytest: any import of torch, transformers or peft fails.
NO_TORCH = textwrap.dedent("""
    import sys
    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "peft", "safetensors"):
                raise ImportError(f"{name} is hidden: replay must not import it")
    sys.meta_path.insert(0, NoTorch())
    import pytest
    sys.exit(pytest.main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, one_torch_thread):
    """A paper's repository: claims/planted.yaml, its model and pairs, pytest.ini pointing the
    plugin at claims/ and evidence/, and the bundle `loccheck verify --evidence` recorded."""
    from loccheck.models.loading import load_model
    from loccheck.testing import claim_text, write_favoured_pairs, write_many_heads_model_dir

    root = tmp_path_factory.mktemp("paper")
    model_dir = write_many_heads_model_dir(root / "model", "llama", [LIVE])
    pairs = write_favoured_pairs(root / "pairs.jsonl", load_model(str(model_dir), device="cpu").model, [LIVE])
    (root / "claims").mkdir()
    (root / "claims" / "planted.yaml").write_text(claim_text(
        model_dir, pairs, [str(LIVE)], n=19, edit=BUDGET, split=SPLIT, random_seed=3,
        expect="{editing: SPECIFIC, necessity: SUPPORTED}",
        extra="tests: [editing, necessity, without]\nnecessity: {n: 99}\n"))
    (root / "pytest.ini").write_text("[pytest]\nloccheck_claim_dirs = claims\nloccheck_evidence = evidence\n"
                                     "loccheck_report_dir = replayed\n")
    began = time.monotonic()
    assert main(["verify", str(root / "claims" / "planted.yaml"), "--evidence", str(root / "evidence"),
                 "--report-dir", str(root / "recorded"), "--cache-dir", str(root / "cache"), "--quiet"]) == 0
    size = sum(p.stat().st_size for p in (root / "evidence").rglob("*") if p.is_file())
    print(f"\nrecorded in {time.monotonic() - began:.1f} s; bundle {size / 1024:.0f} KiB")
    return root


def _cli(repo: Path, *args: str, capsys=None) -> int:
    return main([*args[:1], str(repo / "claims" / "planted.yaml"), "--evidence", str(repo / "evidence"),
                 "--report-dir", str(repo / "checked"), *args[1:]])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("loccheck: error: "), err
    return err[0]


@pytest.fixture
def edited(repo):
    """Restores every file of the repository a test changes."""
    saved: dict[Path, bytes] = {}

    def edit(path: Path, change) -> None:
        saved.setdefault(path, path.read_bytes())
        path.write_bytes(change(path.read_bytes()))
    yield edit
    for path, data in saved.items():
        path.write_bytes(data)


def test_pytest_replays_the_bundle_without_torch_or_the_model(repo):
    model, hidden = repo / "model", repo / "model-away"
    os.replace(model, hidden)
    try:
        began = time.monotonic()
        run = subprocess.run([sys.executable, "-c", NO_TORCH, "-p", "no:cacheprovider", "--loccheck-replay", "-q"],
                             cwd=repo, capture_output=True, text=True, timeout=300)
        seconds = time.monotonic() - began
    finally:
        os.replace(hidden, model)
    print(f"\nreplayed in {seconds:.1f} s (a new process, pytest and the plugin included)")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "planted: SPECIFIC (as expected)" in run.stdout
    recorded = json.loads((repo / "recorded" / "planted" / "result.json").read_text())
    replayed = json.loads((repo / "replayed" / "planted" / "result.json").read_text())
    assert replayed == recorded                                         # every number, bit for bit
    assert ((repo / "replayed" / "planted" / "report.md").read_text()
            == (repo / "recorded" / "planted" / "report.md").read_text())
    assert replayed["evidence"]["necessity"]["verdict"] == "SUPPORTED" and "without" in replayed["evidence"]


def test_a_changed_learning_rate_fails_with_one_line_naming_the_field(repo, edited, capsys):
    claim = repo / "claims" / "planted.yaml"
    edited(claim, lambda b: b.replace(b"learning_rate: 0.05,", b"learning_rate: 0.04,", 1))
    assert _cli(repo, "check") == 2
    line = _error(capsys)
    assert "planted.yaml" in line and "edits[0].learning_rate: is 0.04 here but 0.05 in the evidence bundle" in line
    assert not (repo / "checked").exists()


def test_prose_and_expectations_change_no_number(repo, edited, capsys):
    claim = repo / "claims" / "planted.yaml"
    edited(claim, lambda b: b.replace(b"The behaviour lives", b"Behaviour lives").replace(
        b"necessity: SUPPORTED}", b"necessity: FALSIFIED}"))
    assert _cli(repo, "check") == 1                      # replayed; the new expectation is not met
    assert "NOT as expected" in capsys.readouterr().out


@pytest.mark.parametrize("target", ["facts.json", "fits/0003.json", "MANIFEST.json"])
def test_an_edited_record_fails_naming_it(repo, edited, capsys, target):
    path = repo / "evidence" / "planted" / target
    if target == "MANIFEST.json":
        edited(path, lambda b: b[: len(b) // 2])                     # truncated
    else:
        edited(path, lambda b: b.replace(b'"stopped"', b'"stopped" ', 1))   # one byte more
    assert _cli(repo, "check") == 2
    line = _error(capsys)
    assert target in line
    assert ("not readable as strict JSON" if target == "MANIFEST.json" else "sha256 is not the manifest's") in line


def _rewrite(repo: Path, name: str, change) -> None:
    """Change a bundle file and make the manifest agree, as a forger would."""
    import hashlib

    folder = repo / "evidence" / "planted"
    path = folder / name
    path.write_text(change(path.read_text()))
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    manifest["files"][name] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))


@pytest.fixture
def forged(repo, edited):
    """`forge(change)`: facts.json changed by `change(facts)`, with a manifest that agrees."""
    folder = repo / "evidence" / "planted"
    for name in ("facts.json", "MANIFEST.json"):
        edited(folder / name, lambda b: b)

    def forge(change) -> None:
        facts = json.loads((folder / "facts.json").read_text())
        change(facts)
        _rewrite(repo, "facts.json", lambda _: json.dumps(facts))
    return forge


def test_a_non_finite_score_is_refused_even_with_a_matching_manifest(repo, forged, capsys):
    def nan_score(facts):
        facts["edits"][0]["metrics"]["preference_margin"] = "NaN!"
    forged(nan_score)
    _rewrite(repo, "facts.json", lambda t: t.replace('"NaN!"', "NaN"))        # what json.dumps would write
    assert _cli(repo, "check") == 2
    assert "facts.json: not readable as strict JSON (NaN is not a JSON number" in _error(capsys)


@pytest.mark.parametrize("change, says", [
    (lambda f: f["edits"][0]["metrics"].update(preference_margin=f["edits"][0]["metrics"]["preference_margin"] + 1),
     "the claim edit's scores in its fit file differ from facts.json's"),          # the claim edits better
    (lambda f: f["ablations"]["necessity"].pop(),                                   # its last ablation gone
     "the necessity null holds 98 of 99 draws and is not decided after them"),
    (lambda f: f.pop("data"), "its records are not what loccheck writes (KeyError: 'data')"),
], ids=["better-claim", "dropped-draw", "other-shape"])
def test_forged_records_fail_even_with_a_matching_manifest(repo, forged, capsys, change, says):
    forged(change)
    assert _cli(repo, "check") == 2
    assert says in _error(capsys)


def test_a_bundle_of_another_claim_and_changed_data_fail(repo, edited, capsys):
    other = repo / "claims" / "other.yaml"
    shutil.copy(repo / "claims" / "planted.yaml", other)
    try:
        shutil.copytree(repo / "evidence" / "planted", repo / "evidence" / "other")
        try:
            assert main(["check", str(other), "--evidence", str(repo / "evidence"), "--report-dir",
                         str(repo / "checked")]) == 2
            assert "the evidence of claim 'planted', not of 'other'" in _error(capsys)
        finally:
            shutil.rmtree(repo / "evidence" / "other")
    finally:
        other.unlink()
    claim_text = (repo / "claims" / "planted.yaml").read_text()
    pairs = Path(claim_text.split("path: '")[1].split("'")[0])
    edited(pairs, lambda b: b + b"\n")
    assert _cli(repo, "check") == 2
    assert "behavior.path: the data file" in _error(capsys)


def test_replay_without_a_bundle_fails_and_fits_nothing(repo, capsys, tmp_path):
    assert main(["check", str(repo / "claims" / "planted.yaml"), "--evidence", str(tmp_path / "none"),
                 "--report-dir", str(tmp_path / "checked")]) == 2
    assert "no evidence bundle here (MANIFEST.json is missing)" in _error(capsys)
    assert main(["verify", "--replay", str(repo / "claims" / "planted.yaml"), "--evidence", str(tmp_path / "none"),
                 "--report-dir", str(tmp_path / "checked")]) == 2          # verify --replay is check
    assert "no evidence bundle here (MANIFEST.json is missing)" in _error(capsys)
    assert not (tmp_path / "checked").exists() and not (tmp_path / "none").exists()


def test_an_audit_refits_a_sample_and_agrees_on_the_restored_model(repo, capsys):
    began = time.monotonic()
    assert _cli(repo, "check", "--audit", "2", "--cache-dir", str(repo / "cache")) == 0
    out = capsys.readouterr()
    print(f"\naudit of 2 edits: {time.monotonic() - began:.1f} s\n{out.err}{out.out}")
    assert out.err.count("audit [") == 2 and "audit passed: 2 refitted edits" in out.out


def test_an_audit_on_a_model_with_one_weight_changed_fails(repo, edited, capsys):
    from safetensors.numpy import load_file, save_file

    weights = repo / "model" / "model.safetensors"

    def one_weight(data: bytes) -> bytes:
        tensors = load_file(str(weights))
        name = next(n for n in sorted(tensors) if n.endswith("mlp.down_proj.weight"))
        tensors[name].flat[0] += 0.5
        save_file(tensors, str(weights))
        return weights.read_bytes()
    edited(weights, one_weight)
    assert _cli(repo, "check") == 0                                   # replay needs no model
    capsys.readouterr()
    assert _cli(repo, "check", "--audit", "2", "--cache-dir", str(repo / "cache")) == 2
    assert "the model weights here" in _error(capsys)


def test_a_claim_can_ask_the_plugin_to_replay_it_from_its_own_bundle(repo, edited):
    """`evidence: {bundle: ..., replay: true}`: pytest replays this claim with no option given
    (the other claims of a paper would verify); without a bundle it fails naming the field."""
    claim, ini = repo / "claims" / "planted.yaml", repo / "pytest.ini"
    edited(ini, lambda b: b.replace(b"loccheck_evidence = evidence\n", b""))
    edited(claim, lambda b: b + b"evidence: {bundle: ../evidence/planted, replay: true}\n")
    run = subprocess.run([sys.executable, "-c", NO_TORCH, "-p", "no:cacheprovider", "-q"], cwd=repo,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "planted: SPECIFIC (as expected)" in run.stdout, run.stdout + run.stderr
    edited(claim, lambda b: b.replace(b"bundle: ../evidence/planted, ", b""))
    run = subprocess.run([sys.executable, "-c", NO_TORCH, "-p", "no:cacheprovider", "-q"], cwd=repo,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "evidence.bundle: replaying needs the claim's evidence bundle" in run.stdout


def test_a_bundle_made_by_other_numerics_fails_and_an_unused_component_does_not_matter(repo, capsys, monkeypatch):
    from loccheck import numerics

    monkeypatch.setitem(numerics.NUMERICS, "edits.rome", numerics.NUMERICS["edits.rome"] + 1)   # not this claim's
    assert _cli(repo, "check") == 0
    capsys.readouterr()
    monkeypatch.setitem(numerics.NUMERICS, "edits.optimal", numerics.NUMERICS["edits.optimal"] + 1)
    assert _cli(repo, "check") == 2
    assert "recorded with edits.optimal numerics version 1, but this loccheck computes version 2" in _error(capsys)


def test_a_null_of_every_other_location_replays_with_its_size_from_the_model(tmp_path, capsys, one_torch_thread):
    """draw: every: the null's size is not in the claim (it is the model's number of locations
    less one), so a replay takes it from facts.json's n_locations, and a bundle that holds fewer
    or other draws than that fails. The live head of an 8-head model, stop: full: 7 fits, 7
    ablations."""
    from loccheck.testing import claim_text, write_model_dir, write_pairs

    model_dir = write_model_dir(tmp_path / "model", "llama", [HeadLoc(1, 2)])
    claim = tmp_path / "claims" / "every.yaml"
    claim.parent.mkdir()
    claim.write_text(claim_text(model_dir, write_pairs(tmp_path / "pairs.jsonl"), ["L1H2"], n=None, draw="every",
                                alpha=0.2, edit=BUDGET, split=SPLIT, stop="full",
                                extra="tests: [editing, necessity]\nnecessity: {stop: full}\n"))
    args = ["--evidence", str(tmp_path / "evidence"), "--report-dir", str(tmp_path / "out")]
    assert main(["verify", str(claim), *args, "--cache-dir", str(tmp_path / "cache"), "--quiet"]) in (0, 1)
    recorded = json.loads((tmp_path / "out" / "every" / "result.json").read_text())
    assert (recorded["n_null"], recorded["n_locations"], recorded["evidence"]["necessity"]["n_null"]) == (7, 8, 7)
    assert recorded["tests"]["optimal"]["p_value"] == 1 / 8 and recorded["evidence"]["necessity"]["p_value"] == 1 / 8
    capsys.readouterr()
    assert main(["check", str(claim), *args]) in (0, 1)
    assert json.loads((tmp_path / "out" / "every" / "result.json").read_text()) == recorded
    folder = tmp_path / "evidence" / "every"
    for n_locations, says in ((9, "the optimal null holds 7 draws; the claim's null has 8"),
                              (None, "facts.json's n_locations is None, but a null of every other location "
                                     "needs the number of locations")):
        facts = json.loads((folder / "facts.json").read_text())
        facts["n_locations"] = n_locations
        (folder / "facts.json").write_text(json.dumps(facts))
        manifest = json.loads((folder / "MANIFEST.json").read_text())
        manifest["files"]["facts.json"] = __import__("hashlib").sha256((folder / "facts.json").read_bytes()).hexdigest()
        (folder / "MANIFEST.json").write_text(json.dumps(manifest))
        capsys.readouterr()
        assert main(["check", str(claim), *args]) == 2
        assert says in _error(capsys)
