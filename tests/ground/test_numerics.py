"""loccheck.numerics: one version per component that computes cached numbers, readable without
torch; every registered edit method and metric has one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loccheck import numerics
from loccheck.numerics import ALSO_USES, LIBRARIES, NUMERICS, TESTBED, numerics_identity, versions

REPO = Path(__file__).resolve().parents[2]


def test_the_table_loads_without_torch_or_numpy():
    # a replay compares a recorded table with the installed one where no torch is installed
    code = ("import sys, loccheck.numerics as n; n.numerics_identity('models'); "
            "print(sorted({'torch', 'transformers', 'numpy', 'peft'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert out.stdout.strip() == "[]"


def test_every_registered_edit_method_and_metric_has_a_version():
    from loccheck.edits import EDIT_METHODS
    from loccheck.metrics import METRICS

    wanted = {f"edits.{m}" for m in EDIT_METHODS} | {f"metrics.{m}" for m in METRICS} | set(TESTBED)
    assert wanted <= set(NUMERICS), sorted(wanted - set(NUMERICS))
    # and no version of a member that is gone
    members = {k for k in NUMERICS if k.startswith(("edits.", "metrics."))}
    assert members <= wanted, sorted(members - wanted)
    assert all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in NUMERICS.values())


def test_versions_take_what_a_component_also_uses():
    assert versions("edits.iti") == {"activations": NUMERICS["activations"], "edits.iti": NUMERICS["edits.iti"]}
    assert versions("studies.trace_vs_edit") == {"edits.rome": NUMERICS["edits.rome"],
                                                 "studies.trace_vs_edit": NUMERICS["studies.trace_vs_edit"]}
    assert versions("edits.optimal", "edits.optimal") == {"edits.optimal": NUMERICS["edits.optimal"]}
    assert all(set(used) <= set(NUMERICS) for used in ALSO_USES.values())
    with pytest.raises(ValueError, match="`component` must be one of"):
        versions("edits.lora")


def test_an_identity_holds_the_versions_and_the_libraries(monkeypatch):
    identity = numerics_identity(*TESTBED)
    assert identity["numerics"] == {c: NUMERICS[c] for c in sorted(TESTBED)}
    assert set(identity) == {"numerics", *LIBRARIES} and identity["numpy"]   # numpy is installed here
    monkeypatch.setitem(NUMERICS, "scoring", NUMERICS["scoring"] + 1)
    assert numerics_identity(*TESTBED) != identity                 # read when called, not at import
    monkeypatch.setattr(numerics, "_LIBRARY_VERSIONS", {**numerics.library_versions(), "torch": "9.9"})
    assert numerics_identity("data")["torch"] == "9.9"
