"""Hostile command lines and files for the commands around `verify` (issue 21, items 15, 16
and 18): each is refused at once with one line naming the file and the field, exit 2, and
nothing written; the claim-file cases are in tests/front_ends/test_hostile.py."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loccheck.cli import main
from loccheck.errors import printable
from loccheck.testing import claim_text

REPO = Path(__file__).resolve().parents[2]


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loccheck: error: "), captured.err
    assert printable(lines[0]) == lines[0] and "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.fixture
def claim(known_llama, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LOCCHECK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    model_dir, pairs = known_llama
    path = tmp_path / "c.yaml"
    path.write_text(claim_text(model_dir, pairs, ["L1H2"], n=19))
    return path


def nothing_written(tmp_path: Path, *also: Path) -> None:
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]
    assert not (tmp_path / "reports").exists()
    for path in also:
        assert not path.exists(), path


# --- item 15: refused before any work, or at all ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("folder", ["/proc/loccheck-reports", "/proc"])
def test_report_folder_where_no_file_can_be_made(claim, tmp_path, capsys, folder):
    # as root, os.access says /proc is writable; creating a file there says otherwise
    if not Path("/proc/self").exists():
        pytest.skip("no /proc")
    capsys.readouterr()
    assert main(["verify", str(claim), "--out", folder, "--quiet"]) == 2
    line = one_error_line(capsys)
    assert f"{claim}: report folder '{folder}/c' cannot be written" in line
    nothing_written(tmp_path)


def test_cache_folder_where_no_file_can_be_made_leaves_nothing(tmp_path):
    from loccheck.errors import LoccheckError
    from loccheck.files import check_writable_folder

    check_writable_folder(tmp_path / "new" / "deeper", "cache folder")   # possible: proven, then undone
    assert list(tmp_path.iterdir()) == []
    if Path("/proc/self").exists():
        with pytest.raises(LoccheckError, match="cache folder '/proc/x/y' cannot be written"):
            check_writable_folder("/proc/x/y", "cache folder")


@pytest.mark.slow
def test_ray_address_where_nothing_listens_fails_at_once(claim, tmp_path):
    # port 1 on the loopback: nothing listens, so a connection is refused at once; ray.init
    # itself would retry for minutes. Run as a user does, with a deadline.
    pytest.importorskip("ray")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "loccheck", "verify", str(claim), "--out", str(tmp_path / "out"),
                           "--executor", "ray", "--ray-address", "127.0.0.1:1", "--quiet"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    took = time.monotonic() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("loccheck: error: executor: --ray-address '127.0.0.1:1': nothing accepts")
    assert took < 30, took           # the interpreter and the claim; no model, no Ray
    nothing_written(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("address", ["127.0.0.1:0", "127.0.0.1:99999", "host:port"])
def test_ray_address_that_is_no_address(address):
    from loccheck.errors import LoccheckError
    from loccheck.run.executors import RayExecutor

    with pytest.raises(LoccheckError, match=r"--ray-address '[^']*': not host:port with a port from 1 to 65535"):
        RayExecutor(address)


@pytest.mark.slow
def test_localize_with_the_manual_heuristic(claim, tmp_path, capsys):
    out = tmp_path / "pinned.yaml"
    capsys.readouterr()
    assert main(["localize", str(claim), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"{claim}:" in line and "heuristic.method" in line and "'manual'" in line
    nothing_written(tmp_path, out)


def probed(claim: Path) -> Path:
    """The claim with its heads from the probing heuristic (top 1)."""
    claim.write_text(claim.read_text().replace("location: {sites: [L1H2]}", "location: {from_heuristic: true}")
                     + "heuristic: {method: probe, top_k: 1}\n")
    return claim


@pytest.mark.slow   # the claim's tiny model is built with torch
@pytest.mark.parametrize("k", ["0", "-2", "３"])
def test_localize_top_k_must_be_a_positive_number(claim, tmp_path, capsys, k):
    out = tmp_path / "pinned.yaml"
    probed(claim)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["localize", str(claim), "--top-k", k, "--out", str(out)])
    assert exit_info.value.code == 2
    line = one_error_line(capsys)
    assert "argument --top-k: must be a whole number of at least 1" in line
    nothing_written(tmp_path, out)


@pytest.mark.slow   # the claim's tiny model is built with torch
def test_propose_location_refuses_top_k_0(claim):
    from loccheck.errors import LoccheckError
    from loccheck.run.verify import propose_location

    with pytest.raises(LoccheckError, match="top_k must be at least 1, got 0"):
        propose_location(probed(claim), top_k=0)


# --- item 16: `loccheck report` on hostile files ---------------------------------------------------

def _report_refused(capsys, path, *extra) -> str:
    capsys.readouterr()
    assert main(["report", str(path), *extra]) == 2
    return one_error_line(capsys)


def test_report_of_json_nested_too_deeply(tmp_path, capsys):
    path = tmp_path / "result.json"
    path.write_text('{"metric": "m", "claim_name": "c", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    out = tmp_path / "out"
    line = _report_refused(capsys, path, "--out", str(out))
    assert f"{path}: JSON nested too deeply" in line
    assert not out.exists() and not (tmp_path / "report.md").exists()


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_report_of_a_device(tmp_path, capsys):
    line = _report_refused(capsys, "/dev/zero", "--out", str(tmp_path / "out"))
    assert "/dev/zero: cannot read result file: not a regular file (a character device)" in line
    assert not (tmp_path / "out").exists()


def test_report_of_a_file_too_large(tmp_path, capsys):
    from loccheck.cli import MAX_RESULT_BYTES

    path = tmp_path / "result.json"
    with open(path, "wb") as f:           # sparse: no disk, no memory
        f.truncate(MAX_RESULT_BYTES + 1)
    line = _report_refused(capsys, path)
    assert f"{path}: result file is larger than {MAX_RESULT_BYTES} bytes" in line


def test_refused_report_creates_no_folder(tmp_path, capsys):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"metric": "preference_margin", "claim_name": "c", "schema_version": 2}))
    out = tmp_path / "new" / "out"
    line = _report_refused(capsys, path, "--out", str(out))
    assert f"{path}: not a complete loccheck result.json" in line
    assert list(tmp_path.iterdir()) == [path]


def test_report_into_a_folder_where_no_file_can_be_made(tmp_path, capsys):
    if not Path("/proc/self").exists():
        pytest.skip("no /proc")
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"metric": "preference_margin", "claim_name": "c"}))
    line = _report_refused(capsys, path, "--out", "/proc/loccheck-report")
    assert "report folder '/proc/loccheck-report' cannot be written" in line


@pytest.mark.slow   # the claim's tiny model is built with torch
def test_count_options_take_ascii_digits_only(claim, tmp_path, capsys):
    """int() reads a fullwidth '３' as 3: a count given so is refused, not replaced."""
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", str(claim), "--n-null", "３", "--report-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--n-null: expected a whole number, got '３'" in one_error_line(capsys)
    nothing_written(tmp_path, tmp_path / "out")
