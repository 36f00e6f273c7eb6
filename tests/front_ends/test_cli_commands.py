"""`loccheck verify` with several claims and the shared options, `report` (re-render from
result.json, no model, no torch), `schema` and `init`, and their exit codes. Called through
`main([...])`; the claims name heads of the tiny known-answer llama (only L1H2 is live)."""
import contextlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loccheck.testing import DEFAULT_EDIT, claim_text, write_model_dir, write_pairs
from loccheck.claim import load_claim
from loccheck.cli import main
from loccheck.locations import HeadLoc, head_sites
from loccheck.stats.null import sample_null_locations

FIGURES = ("null_hist.png", "loss_curves.png")


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    """Two claims verified in one `loccheck verify` call: a live head with N = 2 (UNDERPOWERED,
    as it expects) and a dead head that expects SUPPORTED (it gets FALSIFIED: gain 0, ties count
    against it). Returns (status, stdout lines, report root, claim paths)."""
    root = tmp_path_factory.mktemp("cli")
    model = write_model_dir(root / "model", "llama", [HeadLoc(1, 2)])
    pairs = write_pairs(root / "pairs.jsonl")
    live, dead = root / "claims" / "live.yaml", root / "claims" / "dead.yaml"
    live.parent.mkdir()
    one_epoch = DEFAULT_EDIT.replace("max_epochs: 3,", "max_epochs: 1,")   # verdicts need only a live gain > 0
    live.write_text(claim_text(model, pairs, ["L1H2"], n=9, alpha=0.05, expect="UNDERPOWERED",
                               edit=one_epoch))
    dead.write_text(claim_text(model, pairs, ["L0H1"], n=2, alpha=0.25, edit=one_epoch))
    out = root / "stdout.txt"
    with open(out, "w") as f, contextlib.redirect_stdout(f):   # module fixtures get no capsys
        status = main(["verify", str(live), str(dead), "--out", str(root / "reports"),
                       "--n-null", "3", "--cache-dir", str(root / "cache"), "--quiet"])
    return status, out.read_text().splitlines(), root / "reports", (live, dead)


@pytest.mark.slow
def test_verify_several_claims_one_exit_code(verified):
    status, lines, reports, (live, dead) = verified
    assert status == 1                        # the dead head is not SUPPORTED
    assert len(lines) == 2
    # --n-null 3 overrides the files' n (9 and 2). The live head beats every dead random head
    # and ties with each draw of itself (the exact null may draw the claim), but
    # 1/(N + 1) = 0.25 > alpha = 0.05 makes it UNDERPOWERED, as it expects.
    ties = sum(d == (HeadLoc(1, 2),) for d in sample_null_locations(head_sites(2, 4), size=1, n=3, seed=0))
    assert lines[0].startswith(f"{live}: UNDERPOWERED (p = {(1 + ties) / 4:.4g}, N = 3, claim gain +")
    assert lines[0].endswith(f"as expected; report: {reports / 'live' / 'report.md'}")
    assert lines[1].startswith(f"{dead}: FALSIFIED (p = 1, N = 3 (1 fitted), claim gain +0, ")
    assert "expected SUPPORTED: NOT as expected" in lines[1]
    for name in ("live", "dead"):             # --out is the report dir: one folder per claim
        result = json.loads((reports / name / "result.json").read_text())
        assert result["n_null"] == 3


@pytest.mark.slow
def test_report_rerenders_byte_identical_without_torch(verified, tmp_path):
    reports = verified[2]
    src = tmp_path / "live"
    shutil.copytree(reports / "live", src)
    original = {name: (src / name).read_bytes() for name in ("report.md", *FIGURES)}
    for name in original:
        (src / name).unlink()

    # In place (the folder of result.json), in a fresh interpreter that must not import torch.
    code = ("import sys; from loccheck.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "report", str(src / "result.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(src / "report.md")
    for name, data in original.items():
        assert (src / name).read_bytes() == data, name

    # Elsewhere: the new folder gets the report, the figures and a copy of result.json.
    assert main(["report", str(src / "result.json"), "--out", str(tmp_path / "copy")]) == 0
    assert (tmp_path / "copy" / "report.md").read_bytes() == original["report.md"]
    assert (tmp_path / "copy" / "result.json").read_bytes() == (src / "result.json").read_bytes()


@pytest.mark.parametrize("content, message", [
    (None, "cannot read result file"),
    ("{not json", "not valid JSON"),
    ('{"verdict": "SUPPORTED"}', "not a loccheck result.json (no 'metric', 'claim_name')"),
    ("[1, 2]", "not a loccheck result.json"),
])
def test_report_bad_input_exits_2(tmp_path, capsys, content, message):
    path = tmp_path / "result.json"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"loccheck: error: {path}: ") and message in err[0]
    assert not (tmp_path / "report.md").exists()


def test_models_lists_every_family_and_where_its_sites_are(capsys):
    from loccheck.models import supported_model_types

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| model_type")}
    assert sorted(rows) == supported_model_types()
    assert "input of model.layers.*.self_attn.o_proj" in rows["gemma2"]
    assert "output of model.layers.*.mlp.down_proj, then post_feedforward_layernorm" in rows["gemma2"]
    assert "output of model.layers.*.mlp " in rows["mixtral"] and "mixture of experts" in rows["mixtral"]
    assert "input of transformer.h.*.attn.out_proj" in rows["gptj"]


def test_schema_is_json_with_descriptions(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["claim"]["description"] == "The claim, in one sentence."
    assert set(schema["required"]) == {"claim", "location"}
    n = schema["$defs"]["RandomLocationsSpec"]["properties"]["n"]
    assert n["description"].startswith("Number of random locations")
    # edit methods are a list, each item one registered method's section chosen by `method:`
    edits = schema["properties"]["edits"]
    assert edits["type"] == "array" and edits["minItems"] == 1
    assert {ref["$ref"] for ref in edits["items"]["oneOf"]} == {
        "#/$defs/OptimalEditSection", "#/$defs/ITIEditSection", "#/$defs/RomeEditSection"}
    assert {ref["$ref"] for ref in schema["properties"]["heuristic"]["oneOf"]} == {
        "#/$defs/ManualHeuristicSection", "#/$defs/ProbeHeuristicSection", "#/$defs/CausalTracingSection",
        "#/$defs/NeuronAttributionSection", "#/$defs/DirectionProbeSection"}
    assert {"sites", "subspace", "latents", "dictionary"} <= set(schema["$defs"]["LocationSpec"]["properties"])


def test_init_writes_a_template_that_loads_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "my_claim"]) == 0
    path = tmp_path / "claims" / "my_claim.yaml"
    assert capsys.readouterr().out.strip() == "claims/my_claim.yaml"
    text = path.read_text()
    claim = load_claim(path)
    assert claim.name == "my_claim" and claim.location.sites == ("L0H0", "L0H1")
    assert text.startswith("# loccheck claim 'my_claim'")
    assert "loccheck verify claims/my_claim.yaml" in text

    path.write_text(text + "# my edits\n")
    assert main(["init", "my_claim"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["loccheck: error: claims/my_claim.yaml already exists; not overwriting it "
                   "(choose another name or remove the file)"]
    assert path.read_text().endswith("# my edits\n")

    assert main(["init", "papers/iti.yml"]) == 0            # a path is taken as it is
    assert load_claim(tmp_path / "papers" / "iti.yml").name == "iti"


@pytest.mark.parametrize("args", [
    ["verify", "x.yaml", "--n-null", "0"],
    ["verify", "x.yaml", "--executor", "dask"],
    ["init"],
    ["nonsense"],
])
def test_usage_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_report_renders_a_result_of_schema_1(tmp_path, capsys):
    """A result.json written by loccheck 0.1.0 (tests/front_ends/result_v1.json: a tiny Llama claim
    under both edits) is upgraded and rendered; the numbers are those it stored."""
    v1 = json.loads((Path(__file__).parent / "result_v1.json").read_text())
    assert "schema_version" not in v1 and v1["edit_method"] == "optimal"
    assert main(["report", str(Path(__file__).parent / "result_v1.json"),
                 "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert f"**Verdict: {v1['verdict']}**" in report and v1["verdict_reason"] in report
    assert "## The same heads under each edit" in report and "## The ITI edits" in report
    n, k = v1["n_random"], round(v1["p_value"] * (v1["n_random"] + 1) - 1)
    assert f"| p-value (one-sided)" in report and f"(= {k + 1}/{n + 1})" in report
    assert (tmp_path / "methods.png").read_bytes()[:4] == b"\x89PNG"
    # the copy beside it is the file as it was: upgrading happens in memory only
    assert json.loads((tmp_path / "result.json").read_text()) == v1


def test_report_refuses_a_newer_schema(tmp_path, capsys):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"schema_version": 99, "metric": "m", "claim_name": "c"}))
    assert main(["report", str(path)]) == 2
    assert "schema_version 99 is not one this loccheck reads" in capsys.readouterr().err


@pytest.mark.slow
def test_progress_is_one_plain_line_per_edit_without_a_terminal(known_llama, tmp_path, capsys,
                                                                 monkeypatch):
    model, pairs = known_llama
    claim = tmp_path / "claims" / "progress.yaml"
    claim.parent.mkdir()
    claim.write_text(claim_text(model, pairs, ["L1H2"], n=2, alpha=0.25, edit=DEFAULT_EDIT))
    monkeypatch.setenv("LOCCHECK_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["verify", str(claim), "--out", str(tmp_path / "r"), "--executor", "serial"]) in (0, 1)
    err = capsys.readouterr().err.splitlines()
    lines = [ln for ln in err if ln.startswith("loccheck: progress [")]
    assert [ln.split("]")[0] for ln in lines] == ["loccheck: progress [1/4", "loccheck: progress [2/4",
                                                  "loccheck: progress [3/4", "loccheck: progress [4/4"]
    assert "claim [optimal]: fitted in" in lines[0] and "preference_margin gain" in lines[0]
    assert "whole model [optimal]" in lines[1]
    # each phase before and after the fits: what it does, then how long it took (a CI log that
    # shows nothing for minutes looks hung)
    phases = [ln for ln in err if ln.startswith("loccheck: progress ") and not ln.startswith("loccheck: progress [")]
    checked = [ln for ln in phases if ln.startswith("loccheck: progress checking the claim's inputs")]
    assert len(checked) == 1 and re.search(r": done in [0-9.]+ s$", checked[0])   # its end only
    starts = ["loading the model", "scoring the unedited model on the 6 test pairs", "writing the report"]
    for start in starts:
        begun = [i for i, ln in enumerate(phases) if ln.startswith(f"loccheck: progress {start}") and ln.endswith("...")]
        ended = [i for i, ln in enumerate(phases) if ln.startswith(f"loccheck: progress {start}")
                 and re.search(r": done in [0-9.]+ s$", ln)]
        assert len(begun) == len(ended) == 1 and begun[0] < ended[0], (start, phases)
    assert err.index(next(ln for ln in err if "scoring the unedited model" in ln and "done" in ln)) < \
        err.index(lines[0])                                   # before the first fit
    result = json.loads((tmp_path / "r" / "progress" / "result.json").read_text())
    assert result["executor"] == "serial"
    # a second run serves every edit from the cache, and says so
    assert main(["verify", str(claim), "--out", str(tmp_path / "r")]) in (0, 1)
    again = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("loccheck: progress [")]
    assert len(again) == 4 and all("from the cache" in ln for ln in again)


def test_unknown_executor_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["verify", str(tmp_path / "x.yaml"), "--executor", "dask"])
    assert info.value.code == 2 and "invalid choice: 'dask'" in capsys.readouterr().err
