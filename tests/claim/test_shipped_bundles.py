"""The evidence the project ships: the bundles `loccheck verify --evidence evidence` recorded for
the shipped SmolLM2 claims replay, without the model, to the result they recorded and the
verdicts their claims expect. A change to a claim's numbers, to the data, or to the numerics of
a component they use fails here until the bundles are recorded again (about 35 minutes on 2
cores: `loccheck verify claims/iti_truthful.yaml claims/rome_tracing_smollm2.yaml --evidence
evidence`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from loccheck.claim import load_claim
from loccheck.run.replay import replay

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["iti_truthful", "rome_tracing_smollm2"]


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_bundle_replays_to_its_recorded_result(name, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("LOCCHECK_DATA_DIR", str(data_dir))
    claim = load_claim(ROOT / "claims" / f"{name}.yaml")
    result = replay(claim, ROOT / "evidence" / name, out_dir=tmp_path)
    recorded = json.loads((ROOT / "evidence" / name / "result.json").read_text())
    assert result.matches_expectation, result.verdict_reason
    assert {k: v for k, v in result.payload.items() if k != "claim_file"} == \
        {k: v for k, v in recorded.items() if k != "claim_file"}
    assert (tmp_path / "report.md").is_file()


def test_every_shipped_bundle_is_small():
    for name in SHIPPED:
        size = sum(p.stat().st_size for p in (ROOT / "evidence" / name).rglob("*") if p.is_file())
        assert 0 < size < 4 << 20, f"{name}: {size} bytes"
