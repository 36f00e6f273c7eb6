"""A fit's identity covers every file of the model that can change its numbers (config,
tokenizer, chat template, generation config, weights) and, for a hub model, the commit its
revision resolved to: a changed model never gets another model's fits. It covers the versions of
the code that computes (loccheck.numerics) and of the libraries, and no other byte of loccheck."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loccheck.run.testbed import prepare_testbed
from loccheck.claim import parse_claim
from loccheck.errors import LoccheckError
from loccheck.models.loading import _hub_identity, folder_sha256, open_model
from loccheck.testing import claim_text

pytestmark = pytest.mark.slow   # tiny torch models


def _key(model_dir: Path, pairs: Path, tmp_path: Path) -> str:
    claim = parse_claim(claim_text(model_dir, pairs, ["L1H2"], n=19), path=tmp_path / "c.yaml")
    return prepare_testbed(claim, tmp_path / "cache").key


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change", ["config", "tokenizer", "chat_template", "generation_config", "new_file"])
def test_every_non_weight_file_is_part_of_the_key(known_llama, tmp_path, change):
    source, pairs = known_llama
    model = tmp_path / "model"
    shutil.copytree(source, model)
    before = _key(model, pairs, tmp_path)
    assert _key(model, pairs, tmp_path) == before                   # the same files: the same key
    if change == "config":
        _edit_json(model / "config.json", rms_norm_eps=1e-3)
    elif change == "tokenizer":
        _edit_json(model / "tokenizer_config.json", model_max_length=512)
    elif change == "chat_template":
        (model / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    elif change == "generation_config":
        (model / "generation_config.json").write_text(json.dumps({"temperature": 0.5}))
    else:
        (model / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<pad>"}))
    assert _key(model, pairs, tmp_path) != before


def test_hidden_bookkeeping_files_are_not_part_of_the_model(known_llama, tmp_path):
    source, _ = known_llama
    model = tmp_path / "model"
    shutil.copytree(source, model)
    before = folder_sha256(model)
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert folder_sha256(model) == before


def _hub_cache(root: Path, source: Path, commits: dict[str, float]) -> Path:
    """A Hugging Face hub cache holding org/tiny at each commit (its config's rms_norm_eps
    differs), with refs/main at the last one."""
    repo = root / "models--org--tiny"
    for commit, eps in commits.items():
        snapshot = repo / "snapshots" / commit
        shutil.copytree(source, snapshot)
        _edit_json(snapshot / "config.json", rms_norm_eps=eps)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(list(commits)[-1])
    return root


def test_a_hub_model_is_keyed_by_its_resolved_commit(known_llama, tmp_path, monkeypatch):
    source, _ = known_llama
    a, b = "a" * 40, "b" * 40
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(_hub_cache(tmp_path / "hub", source, {a: 1e-6, b: 1e-3})))
    import huggingface_hub.constants as hub_constants
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)

    latest = open_model("org/tiny", cache=tmp_path / "cache")      # no revision: refs/main
    pinned = open_model("org/tiny", revision=a, cache=tmp_path / "cache")
    assert latest.identity["commit"] == b and pinned.identity["commit"] == a
    assert latest.sha256 != pinned.sha256 and None not in (latest.sha256, pinned.sha256)
    # a snapshot of plain files (no links into blobs/) is identified by their contents, as a folder is
    assert pinned.sha256 == folder_sha256(tmp_path / "hub" / "models--org--tiny" / "snapshots" / a)


def _hub_blob_cache(root: Path, source: Path, commits: dict[str, float]) -> Path:
    """A hub cache laid out as huggingface_hub writes it: each file once as blobs/<sha256 of its
    bytes>, and snapshots/<commit>/<file> a relative link to it. The commits differ in their
    config's rms_norm_eps and share every other blob (the weights' too)."""
    repo = root / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    for commit, eps in commits.items():
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for file in sorted(source.iterdir()):
            data = file.read_bytes()
            if file.name == "config.json":
                data = json.dumps({**json.loads(data), "rms_norm_eps": eps}).encode()
            blob = hashlib.sha256(data).hexdigest()
            (repo / "blobs" / blob).write_bytes(data)
            (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(list(commits)[-1])
    return root


@pytest.fixture
def hub_blobs(known_llama, tmp_path, monkeypatch):
    """org/tiny at commits a and b in a hub cache of blobs and links (offline)."""
    source, _ = known_llama
    a, b = "a" * 40, "b" * 40
    hub = _hub_blob_cache(tmp_path / "hub", source, {a: 1e-6, b: 1e-3})
    import huggingface_hub.constants as hub_constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return hub / "models--org--tiny", a, b


def test_a_hub_model_is_identified_by_its_links_without_reading_its_weights(known_llama, hub_blobs):
    repo, a, _ = hub_blobs
    before = _hub_identity("org/tiny", a)
    weights = repo / "snapshots" / a / "model.safetensors"
    sha = hashlib.sha256((known_llama[0] / "model.safetensors").read_bytes()).hexdigest()
    assert before["files"]["model.safetensors"] == sha               # the blob's name: the weights' sha256
    assert before["commit"] == a and len(before["sha256"]) == 64
    # the weights' blob gone: the link still names it, and that is all the identity reads (loading
    # the model would need the file; knowing which model it is does not)
    os.unlink(weights.resolve())
    assert not weights.exists() and weights.is_symlink()
    assert _hub_identity("org/tiny", a) == before


def test_hub_commits_with_different_config_blobs_differ(hub_blobs):
    _, a, b = hub_blobs
    first, second = _hub_identity("org/tiny", a), _hub_identity("org/tiny", b)
    assert first["sha256"] != second["sha256"]
    assert {f for f in first["files"] if first["files"][f] != second["files"][f]} == {"config.json"}
    assert open_model("org/tiny").identity == second                  # no revision: refs/main


def test_the_testbed_key_holds_the_numerics_versions_not_loccheck_s(known_llama, tmp_path, monkeypatch):
    from loccheck.numerics import NUMERICS, TESTBED, numerics_identity

    model, pairs = known_llama
    claim = parse_claim(claim_text(model, pairs, ["L1H2"], n=19), path=tmp_path / "c.yaml")
    testbed = prepare_testbed(claim, tmp_path / "cache")
    assert testbed.identity["code"] == numerics_identity(*TESTBED) and "loccheck" not in testbed.identity
    for component in TESTBED:                                        # what every fit shares
        with monkeypatch.context() as m:
            m.setitem(NUMERICS, component, NUMERICS[component] + 1)
            assert prepare_testbed(claim, tmp_path / "cache").key != testbed.key, component
    monkeypatch.setitem(NUMERICS, "edits.optimal", NUMERICS["edits.optimal"] + 1)   # in the fit's key only
    assert prepare_testbed(claim, tmp_path / "cache").key == testbed.key


_TESTBED_KEY = """
import sys
from pathlib import Path
import loccheck
from loccheck.claim import parse_claim
from loccheck.run.testbed import prepare_testbed
path = Path(sys.argv[1])
print(loccheck.__file__)
print(prepare_testbed(parse_claim(path.read_text(), path=path), path.parent / "cache").key)
"""


def test_a_release_that_changes_no_numbers_keeps_the_testbed_key(known_llama, tmp_path):
    """The testbed's key under a copy of loccheck with another version, a changed comment in an
    edit module and a changed report is this one's (tests/run/test_jobs.py does the same for the
    keys of fits, scores, ablations and activations)."""
    import loccheck

    model, pairs = known_llama
    claim = tmp_path / "c.yaml"
    claim.write_text(claim_text(model, pairs, ["L1H2"], n=19))
    here = Path(loccheck.__file__).parent
    copy = tmp_path / "release" / "loccheck"
    shutil.copytree(here, copy, ignore=shutil.ignore_patterns("__pycache__"))
    init = copy / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{loccheck.__version__}"', '__version__ = "9.0.0"'))
    (copy / "edits" / "optimal.py").write_text("# a new comment\n" + (copy / "edits" / "optimal.py").read_text())
    (copy / "report" / "markdown.py").write_text((copy / "report" / "markdown.py").read_text() + "\n# a note\n")
    out = subprocess.run([sys.executable, "-c", _TESTBED_KEY, str(claim)], cwd=copy.parent, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(copy.parent), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    where, key = out.stdout.strip().splitlines()[-2:]
    assert Path(where).parent == copy                                # the copy ran, not this tree
    assert key == prepare_testbed(parse_claim(claim.read_text(), path=claim), tmp_path / "cache").key


def test_a_model_whose_commit_cannot_be_told_is_refused(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LoccheckError, match="pin model.revision to a commit") as err:
        _hub_identity("org/absent", None)
    assert err.value.key == "model.revision"


def test_a_hub_model_s_bundle_replays_with_the_snapshot_s_weights_removed(known_llama, hub_blobs, tmp_path):
    """Recorded on org/tiny at commit a, replayed after its weights' blob is gone: replay reads
    the bundle, never the model, and the bundle names the commit and the weights' etag."""
    from loccheck.run.replay import replay
    from loccheck.run.verify import verify

    repo, a, _ = hub_blobs
    _, pairs = known_llama
    claim = parse_claim(claim_text("org/tiny", pairs, ["L1H2"], n=3), path=tmp_path / "hub.yaml")
    claim = claim.with_overrides({"model.revision": a})
    recorded = verify(claim, out_dir=tmp_path / "recorded", cache_dir=tmp_path / "cache", progress=False,
                      evidence=tmp_path / "evidence" / claim.name)
    os.unlink((repo / "snapshots" / a / "model.safetensors").resolve())
    replayed = replay(claim, tmp_path / "evidence" / claim.name, out_dir=tmp_path / "replayed")
    assert replayed.payload == recorded.payload
    facts = json.loads((tmp_path / "evidence" / claim.name / "facts.json").read_text())
    identity = facts["testbed"]["identity"]["model"]
    assert identity["commit"] == a and identity["weights"] == _hub_identity("org/tiny", a)["sha256"]
