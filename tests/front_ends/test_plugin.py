"""The pytest plugin, tested through pytester on what users see: a temporary paper repository
with a claims/ folder, run by pytest, outcomes and output matched line by line.

The claims name heads of a tiny known-answer llama (2 layers x 4 heads) in which only L1H2
reaches the residual stream, so their verdicts follow from the maths, not from luck:
- a dead head (L0H1) has gain exactly 0; random single heads have gain 0 (dead) or more
  (the live one), and ties count against the claim, so p = 1 and the verdict is FALSIFIED;
- the live head beats every random (dead) head: p = 1/(N + 1) exactly;
- N = 2 at alpha = 0.05 is UNDERPOWERED whatever the gains (1/3 > 0.05).

The edits train for one epoch instead of three: the verdicts above do not depend on how well
the live head is fitted, only on its gain being positive.

The inner sessions run in this process (fast: torch is loaded once). pytester removes the
modules an inner run imports when the test ends, so `warm` verifies once before any pytester
snapshot: every module verification touches is imported by then and stays.
"""
import subprocess
import sys

import pytest

from loccheck.testing import DEFAULT_EDIT, claim_text, write_model_dir, write_pairs
from loccheck.locations import HeadLoc

pytest_plugins = ["pytester"]


ONE_EPOCH = DEFAULT_EDIT.replace("max_epochs: 3,", "max_epochs: 1,")


# The null may draw the claimed head (that keeps it exact); the first three draws of this seed
# are dead heads, so the live head's p-values below are 1/(N + 1).
NULL_SEED = 1


def short_claim(*args, **kw) -> str:
    """claim_text with a one-epoch budget (3 steps per edit)."""
    return claim_text(*args, edit=ONE_EPOCH, **{"random_seed": NULL_SEED, **kw})


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """(model_dir, pairs): the tiny llama whose only live head is L1H2, and its data."""
    root = tmp_path_factory.mktemp("known")
    return (write_model_dir(root / "model", "llama", [HeadLoc(1, 2)]),
            write_pairs(root / "pairs.jsonl"))


@pytest.fixture(scope="module")
def warm(known, tmp_path_factory):
    from loccheck.run.verify import verify

    root = tmp_path_factory.mktemp("warm")
    (root / "warm.yaml").write_text(short_claim(*known, ["L1H2"], n=1, alpha=0.5))
    verify(root / "warm.yaml", out_dir=root / "report", progress=False, cache_dir=root / "cache")
    return known


@pytest.fixture
def project(pytester, monkeypatch, warm):
    """A paper repository: write claims with `claim(name, heads, ...)`; a fresh fit cache."""
    monkeypatch.setenv("LOCCHECK_CACHE_DIR", str(pytester.path / "cache"))
    # pytest's unraisableexception plugin runs gc.collect() 5 times when a session ends: about
    # 2.5 s per inner session with torch loaded, and the inner sessions need none of it.
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:unraisableexception")

    def claim(name, heads, folder="claims", **kw):
        path = pytester.path / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(short_claim(*warm, heads, **kw))
        return path

    pytester.claim = claim
    return pytester


EVIDENCE = [
    "*_ claim: dead_unexpected _*",
    "verdict FALSIFIED, expected SUPPORTED",
    "p-value: 1 with N = 3 random locations, 1 fitted (sequential) (alpha = 0.25)",
    "preference_margin gain: claim +0, whole model +*, null mean +*",
    # the verdict's own reason (a dead head gains nothing), not the sequential stop's
    "why: The edit at the claimed heads did not improve the behaviour (gain = 0 <= 0), while the "
    "whole-model edit gains *: editing the location does not show the behaviour lives there.",
    "report: reports/dead_unexpected/report.md",
]


@pytest.mark.slow
def test_claims_pass_fail_and_a_malformed_claim_is_one_collection_error(project):
    project.claim("live_underpowered.yaml", ["L1H2"], n=2, alpha=0.05, expect="UNDERPOWERED")
    project.claim("dead_falsified.yml", ["L0H1"], n=3, alpha=0.25, expect="FALSIFIED")
    project.claim("dead_unexpected.yaml", ["L0H1"], n=3, alpha=0.25)   # expects SUPPORTED
    project.claim("broken.yaml", ["L1X2"], n=3)                        # line 5: bad head
    project.claim("other.yaml", ["L1X2"], folder="data")   # not under claims/: never collected
    project.makepyfile(test_plain="def test_plain():\n    pass\n")

    result = project.runpytest("-m", "claim", "--continue-on-collection-errors")

    result.assert_outcomes(passed=2, failed=1, errors=1, deselected=1)
    # progress reaches the terminal (and a CI log) past the capture: one line per finished edit
    result.stdout.fnmatch_lines(["loccheck: dead_falsified [[]1/5[]] claim [[]optimal[]]: fitted in *, "
                                 "objective 25 -> 25 in 1 epoch(s), converged, "
                                 "preference_margin gain +0*",
                                 "loccheck: dead_falsified [[]3/5[]] random 0 [[]optimal[]]: *",
                                 "loccheck: dead_falsified optimal: the null is decided after 1 of 3 "
                                 "random locations (1 edit as well as the claim); 2 not fitted"])
    result.stdout.fnmatch_lines(EVIDENCE, consecutive=False)
    result.stdout.fnmatch_lines([
        "*ERROR collecting claims/broken.yaml*",
        "claims/broken.yaml:5:*: location.sites[[]0]: a site must look like 'L12H3'*, got 'L1X2'",
    ])
    result.stdout.no_fnmatch_line("*data/other.yaml*")
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*ClaimMismatch*")
    result.stdout.fnmatch_lines(["FAILED claims/dead_unexpected.yaml::dead_unexpected - verdict "
                                 "FALSIFIED*"])   # the first evidence line, cut to the terminal width
    result.stdout.fnmatch_lines([
        "*- loccheck -*",
        "claims/dead_falsified.yml::dead_falsified: FALSIFIED (as expected), p = 1, N = 3, *"
        "-> reports/dead_falsified/report.md",
        "claims/dead_unexpected.yaml::dead_unexpected: FALSIFIED (expected SUPPORTED), p = 1, *",
        "claims/live_underpowered.yaml::live_underpowered: UNDERPOWERED (as expected), "
        "p = 0.3333, N = 2, *",
        "index: reports/index.md",
    ])

    index = (project.path / "reports" / "index.md").read_text()
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in index.splitlines()
            if ln.startswith("| `claims/")]
    assert [r[:5] for r in rows] == [   # claim, verdict (bold when unexpected), expected, p, N
        ["`claims/dead_falsified.yml::dead_falsified`", "FALSIFIED", "FALSIFIED", "1", "3"],
        ["`claims/dead_unexpected.yaml::dead_unexpected`", "**FALSIFIED**", "SUPPORTED", "1", "3"],
        ["`claims/live_underpowered.yaml::live_underpowered`", "UNDERPOWERED", "UNDERPOWERED",
         "0.3333", "2"]]
    assert rows[0][5] == "0" and float(rows[2][5]) > 0          # claim gains: dead 0, live > 0
    assert [r[7] for r in rows] == ["[report.md](dead_falsified/report.md)",
                                    "[report.md](dead_unexpected/report.md)",
                                    "[report.md](live_underpowered/report.md)"]
    assert "2 of 3 claims got the verdict they expect" in index
    for name in ("live_underpowered", "dead_falsified", "dead_unexpected"):
        assert (project.path / "reports" / name / "report.md").is_file()


@pytest.mark.slow
def test_collects_only_claim_dirs_with_ids_markers_and_lines(project):
    a = project.claim("a.yaml", ["L1H2"], folder="paper_claims")
    a.write_text("# The claim of Section 4.\n\n" + a.read_text())   # the claim starts on line 3
    project.claim("b.yaml", ["L1H2"])                       # claims/ is not named: ignored
    project.makefile(".yml", **{"ci": "jobs: {test: {runs-on: ubuntu}}\n"})
    project.makeini("[pytest]\nloccheck_claim_dirs = paper_claims\n")

    items, _ = project.inline_genitems()

    assert [i.nodeid for i in items] == ["paper_claims/a.yaml::a"]
    assert items[0].get_closest_marker("claim") is not None
    assert items[0].location == ("paper_claims/a.yaml", 2, "claim: a")   # 0-based line


@pytest.mark.slow
def test_two_claims_with_one_name_are_a_collection_error(project):
    project.claim("x.yaml", ["L1H2"])
    project.claim("x.yml", ["L1H2"], folder="claims/more")

    result = project.runpytest("--collect-only")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["claims/*x.y*ml: claim name 'x' is also the name of "   # either
                                 "claims/*x.y*ml; their reports would collide: rename one file"])


@pytest.mark.slow
def test_not_claim_deselects_claims(project):
    project.claim("x.yaml", ["L1H2"])
    project.makepyfile(test_plain="def test_plain():\n    pass\n")

    result = project.runpytest("-m", "not claim")

    result.assert_outcomes(passed=1, deselected=1)
    assert not (project.path / "reports").exists()


@pytest.mark.slow
def test_ini_options_beat_the_claim_file(project):
    # The file asks for N = 9 at alpha = 0.1 (enough power); the ini value N = 2 is not.
    project.claim("live.yaml", ["L1H2"], n=9, alpha=0.1, expect="UNDERPOWERED")
    project.makeini("[pytest]\nloccheck_n_null = 2\nloccheck_report_dir = out\n")

    result = project.runpytest()

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["claims/live.yaml::live: UNDERPOWERED (as expected), p = 0.3333, "
                                 "N = 2, * -> out/live/report.md", "index: out/index.md"])
    assert (project.path / "out" / "live" / "result.json").is_file()
    assert (project.path / "out" / "index.md").is_file()


@pytest.mark.slow
def test_flag_beats_ini_and_paths_resolve_where_they_were_given(project, monkeypatch):
    from loccheck.plugin import SESSION_KEY

    monkeypatch.chdir(project.mkdir("sub"))     # flags are relative to here, ini values to tox.ini
    project.makeini("[pytest]\nloccheck_n_null = 2\nloccheck_report_dir = out\n"
                    "loccheck_cache_dir = ci-cache\nloccheck_refresh = true\n")
    config = project.parseconfigure("--loccheck-n-null", "7", "--loccheck-cache-dir", "c")
    s = config.stash[SESSION_KEY].settings
    assert (s.n_null, s.report_dir, s.cache_dir, s.executor, s.refresh) == (
        7, project.path / "out", project.path / "sub" / "c", "serial", True)

    project.makeini("[pytest]\n")
    s = project.parseconfigure().stash[SESSION_KEY].settings
    assert (s.n_null, s.report_dir, s.cache_dir, s.refresh) == (None, project.path / "reports",
                                                                  None, False)


@pytest.mark.parametrize("ini, flag, message", [
    ("loccheck_executor = dask", [], "*ini option loccheck_executor: must be one of serial, ray, got 'dask'*"),
    ("loccheck_n_null = 0", [], "*ini option loccheck_n_null: must be at least 1, got 0*"),
    ("", ["--loccheck-executor", "dask"], "*--loccheck-executor: invalid choice: 'dask'*"),
    ("", ["--loccheck-n-null", "none"], "*--loccheck-n-null: expected a whole number, got 'none'*"),
])
@pytest.mark.slow
def test_bad_option_values_are_usage_errors(project, ini, flag, message):
    project.makeini(f"[pytest]\n{ini}\n")
    result = project.runpytest(*flag)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


@pytest.mark.slow
def test_fixture_verifies_with_the_session_options(project):
    project.claim("live.yaml", ["L1H2"], n=2, alpha=0.05)
    project.makepyfile(test_paper="""
        from pathlib import Path

        def test_live_head_beats_every_random_head(loccheck_verify):
            result = loccheck_verify("claims/live.yaml", random_locations__n=3)
            assert result.n_null == 3
            assert result.p_value == 1 / 4          # the three random heads are dead
            assert result.claim_gain > 0 and result.null_gains == [0.0, 0.0, 0.0]
            assert Path(result.report_dir) == Path("custom", "live").resolve()
    """)

    result = project.runpytest("test_paper.py", "--loccheck-report-dir", "custom")

    result.assert_outcomes(passed=1)
    assert (project.path / "custom" / "live" / "report.md").is_file()


@pytest.mark.slow
def test_run_time_error_is_one_line_without_traceback(project):
    path = project.claim("no_data.yaml", ["L1H2"], n=2)
    path.write_text(path.read_text().replace("pairs.jsonl", "missing.jsonl"))

    result = project.runpytest()

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["loccheck: error: *missing.jsonl*",
                                 "claims/no_data.yaml::no_data: ERROR: *missing.jsonl*"])
    result.stdout.no_fnmatch_line("*Traceback*")
    index = (project.path / "reports" / "index.md").read_text()
    assert "| `claims/no_data.yaml::no_data` | **ERROR** | SUPPORTED " in index
    assert "missing.jsonl' not found" in index


@pytest.mark.slow
def test_a_report_folder_that_cannot_be_made_names_the_claim_file(project):
    project.claim("blocked.yaml", ["L1H2"], n=2)
    (project.path / "a-file").write_text("not a folder")

    result = project.runpytest("--loccheck-report-dir", "a-file/reports")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["claims/blocked.yaml::blocked: ERROR: *claims/blocked.yaml: report folder *a-file*",
                                 "index: not written, *a-file/reports/index.md: Not a directory"])
    result.stdout.no_fnmatch_line("*Traceback*")


def test_importing_the_plugin_imports_no_torch():
    code = ("import sys, loccheck.plugin; heavy = [m for m in ('torch', 'transformers', 'peft', "
            "'matplotlib', 'pydantic') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
