"""Shared fixtures: tiny random-weight models of each supported architecture (from
loccheck.testing; nothing is downloaded), and the data folder CI points LOCCHECK_DATA_DIR at."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

from loccheck.testing import FAMILIES, tiny_model

settings.register_profile("ci", max_examples=200, deadline=None)
settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder: $LOCCHECK_DATA_DIR, else ../shared/data beside the repo."""
    path = Path(os.environ.get("LOCCHECK_DATA_DIR") or REPO.parent / "shared" / "data").resolve()
    if not (path / "TruthfulQA.csv").is_file():
        pytest.skip(f"TruthfulQA.csv not found in {path} (set LOCCHECK_DATA_DIR)")
    return path


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Fitted edits go to a fresh cache per test session, so a test that fits really fits; the
    converted SmolLM2 weights (a minute to convert) are shared with the user's cache."""
    from loccheck.cache import cache_dir

    real = cache_dir()
    root = tmp_path_factory.mktemp("loccheck-cache")
    (real / "models").mkdir(parents=True, exist_ok=True)
    (root / "models").symlink_to(real / "models", target_is_directory=True)
    previous = os.environ.get("LOCCHECK_CACHE_DIR")
    os.environ["LOCCHECK_CACHE_DIR"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("LOCCHECK_CACHE_DIR", None)
    else:
        os.environ["LOCCHECK_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def known_llama(tmp_path_factory):
    """A tiny Llama in which only head L1H2 reaches the residual stream, and pairs it can learn."""
    from loccheck.testing import write_model_dir, write_pairs
    from loccheck.locations import HeadLoc

    root = tmp_path_factory.mktemp("known-llama")
    return write_model_dir(root / "model", "llama", [HeadLoc(1, 2)]), write_pairs(root / "pairs.jsonl")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models are ~40x slower with two torch threads competing for two busy cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the fast tier: `pytest -m "not slow"` runs the tests that need no torch -----------------

def _fast_tier(config) -> bool:
    return config.option.markexpr.replace(" ", "") == "notslow"


def pytest_ignore_collect(collection_path, config):
    """Under -m "not slow", a module marked slow as a whole is not even imported (it imports
    torch), so the tier runs without loading torch."""
    if _fast_tier(config) and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return "\npytestmark = pytest.mark.slow" in collection_path.read_text(encoding="utf-8") or None
    return None


@pytest.fixture(autouse=True)
def _fast_tier_stays_torch_free(request):
    """A test in the fast tier that loads torch fails: mark it slow."""
    yield
    if _fast_tier(request.config) and "torch" in sys.modules:
        pytest.fail(f"{request.node.nodeid} imported torch: mark it @pytest.mark.slow", pytrace=False)


# --- the testbeds the contract tests (tests/*/test_*_contracts.py) run every registered member on ---

@pytest.fixture(scope="module")
def contract_testbed(known_llama, tmp_path_factory):
    """The testbed of a known-answer claim that lists every edit method that edits heads on any data."""
    from loccheck.edits import EDIT_METHODS
    from loccheck.metrics import METRICS
    from loccheck.run.testbed import prepare_testbed
    from loccheck.claim import parse_claim
    from loccheck.testing import claim_text

    model_dir, pairs = known_llama
    edits = "[" + ", ".join(f"{{method: {name}}}" for name, m in EDIT_METHODS.items()
                            if "head" in m.site_kinds and m.datasets is None) + "]"
    root = tmp_path_factory.mktemp("contracts")
    texts = root / "texts.txt"                       # for the side-effect metrics
    texts.write_text("the river runs to the sea\nan apple fell down\n")
    every_metric = f"metrics: [{', '.join(METRICS)}]\nside_effects: {{path: '{texts}'}}\n"
    claim = parse_claim(claim_text(model_dir, pairs, ["L1H2", "L0H0"], n=2, edits=edits, extra=every_metric),
                        path=root / "contracts.yaml")
    return claim, prepare_testbed(claim, root / "cache")


@pytest.fixture(scope="module")
def contract_facts_testbed(tmp_path_factory):
    """A testbed of facts a tiny model knows (dataset: known_facts) at an MLP location, listing every
    edit method that edits MLP sites: for the methods and heuristics that need facts."""
    from loccheck.edits import EDIT_METHODS
    from loccheck.metrics import METRICS
    from loccheck.run.testbed import prepare_testbed
    from loccheck.claim import parse_claim
    from loccheck.locations import MlpLoc
    from loccheck.models.loading import load_model
    from loccheck.testing import write_known_facts, write_model_dir

    root = tmp_path_factory.mktemp("contracts-facts")
    folder = write_model_dir(root / "m", "gpt_neox", [MlpLoc(1)], n_layers=3)
    facts = write_known_facts(root / "known_1000.json", load_model(str(folder), device="cpu").model, n_facts=8)
    texts = root / "texts.txt"                       # side effects, and rome's key statistics
    texts.write_text("\n".join(f"the river {i} runs to the sea {i * 7}" for i in range(40)))
    edits = ", ".join(f"{{method: {name}" + (f", stats_path: '{texts}'" if name == "rome" else "") + "}"
                      for name, m in EDIT_METHODS.items() if "mlp" in m.site_kinds)
    claim = parse_claim(f"claim: x\nmodel: {{name: '{folder}', device: cpu}}\n"
                        f"behavior: {{dataset: known_facts, path: '{facts}', split: {{train: 0.5, "
                        "validation: 0.0, test: 0.5}}\nlocation: {sites: [L1M]}\n"
                        f"edits: [{edits}]\nmetrics: [{', '.join(METRICS)}]\n"
                        f"side_effects: {{path: '{texts}'}}\n", path=root / "facts.yaml")
    return claim, prepare_testbed(claim, root / "cache")
