"""pytest plugin (entry point ``pytest11: loccheck``): every claim file under the folders named
by the ini option ``loccheck_claim_dirs`` (default ``claims``) is one test item.

- id ``claims/<file>.yaml::<claim name>``, marker ``claim`` (``-m claim`` / ``-m "not claim"``);
- it passes when the verdict equals the claim's ``expect`` (SUPPORTED when it states none) and
  fails with short evidence, not a traceback; a malformed claim is one collection error at
  file:line; a bad model or dataset is a failed item with the one-line message;
- options ``--loccheck-*`` and ini keys ``loccheck_*`` come from `loccheck.options`; with
  ``--loccheck-evidence DIR`` (or a claim's ``evidence.bundle``) each claim's evidence bundle is
  written to DIR/<claim name>/, and with ``--loccheck-replay`` (ini ``loccheck_replay = true``,
  or a claim's ``evidence.replay: true``) the verdict is derived from that bundle instead, with
  no model and no torch (`loccheck.run.replay`);
- fixture ``loccheck_verify(claim_path, **overrides) -> VerifyResult`` for custom assertions;
- at the end: one terminal line per claim and ``<report dir>/index.md``.

pytest imports this module in every session of every project where loccheck is installed, so
it imports no torch, transformers, pydantic or matplotlib at module level: the claim schema
loads when a claim file is collected, the model when a claim runs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loccheck.errors import ClaimError, LoccheckError
from loccheck.options import Settings, add_pytest_options, settings_from_pytest

CLAIM_SUFFIXES = (".yaml", ".yml")
INDEX_NAME = "index.md"


@dataclass
class LoccheckSession:
    """Per-session state, kept in ``config.stash``."""
    settings: Settings
    claim_dirs: list[Path]
    invocation_dir: Path
    rows: list[dict] = field(default_factory=list)   # one per claim item that ran (index.md)
    names: dict[str, Path] = field(default_factory=dict)   # claim name -> file (report folders)
    index_path: Path | None = None
    index_error: str | None = None          # why the index could not be written
    write_line: Any = None      # prints one line past pytest's output capture (None: quiet)

    def verify(self, claim, overrides: dict[str, Any] | None = None):
        """verify() with the session's options; `overrides` win over the options. Progress goes
        to the terminal as one plain line per finished edit (pytest captures stderr, and a CI
        log would otherwise show nothing for the minutes a claim takes). With the replay option,
        the verdict is derived from the claim's evidence bundle instead (no model, no torch)."""
        merged = {**self.settings.overrides(), **(overrides or {})}
        if self.settings.replays(claim):
            from loccheck.run.replay import replay

            claim = claim.with_overrides(merged) if merged else claim
            return replay(claim, _bundle_of(claim, self.settings), out_dir=self.settings.claim_report_dir(claim.name))
        from loccheck.run.verify import verify

        return verify(claim, out_dir=self.settings.claim_report_dir(claim.name),
                      overrides=merged or None, progress="lines" if self.write_line else "off",
                      write_line=self.write_line, evidence=self.settings.evidence_folder(claim),
                      **self.settings.verify_kwargs())

    def shown(self, path: str | os.PathLike) -> str:
        """A path as the user typed it: relative to the invocation folder when inside it."""
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.invocation_dir.resolve()))
        except ValueError:
            return str(path)


SESSION_KEY = pytest.StashKey[LoccheckSession]()


# --- hooks ------------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    add_pytest_options(parser)
    parser.addini("loccheck_claim_dirs", "folders whose *.yaml / *.yml files are claims, relative "
                  "to the ini file (default: claims under the rootdir)", type="paths", default=[])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "claim: a loccheck localization claim (collected from "
                                       "the loccheck_claim_dirs folders)")
    try:
        settings = settings_from_pytest(config)
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None
    dirs = config.getini("loccheck_claim_dirs") or [Path(config.rootpath) / "claims"]
    config.stash[SESSION_KEY] = LoccheckSession(
        settings=settings, claim_dirs=[Path(d).resolve() for d in dirs],
        invocation_dir=Path(config.invocation_params.dir),
        write_line=_terminal_writer(config) if config.get_verbosity() >= 0 else None)


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix not in CLAIM_SUFFIXES:
        return None
    state = parent.config.stash.get(SESSION_KEY, None)
    if state is None:
        return None
    resolved = file_path.resolve()
    if any(resolved.is_relative_to(d) for d in state.claim_dirs):
        return ClaimFile.from_parent(parent, path=file_path)
    return None


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(SESSION_KEY, None)
    if state is None or not state.rows:
        return
    from loccheck.files import write_text_atomic
    from loccheck.report import render_index

    path = state.settings.report_dir / INDEX_NAME
    try:
        write_text_atomic(render_index(state.rows), path)
    except OSError as err:      # the claims' own failures already say why; no traceback here
        state.index_error = f"index: not written, {path}: {err.strerror or err}"
        return
    state.index_path = path


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(SESSION_KEY, None)
    if state is None or not state.rows:
        return
    terminalreporter.write_sep("-", "loccheck")
    for row in sorted(state.rows, key=lambda r: r["claim"]):
        terminalreporter.write_line(_summary_line(row, state))
    if state.index_path is not None:
        terminalreporter.write_line(f"index: {state.shown(state.index_path)}")
    elif state.index_error:
        terminalreporter.write_line(state.index_error)


@pytest.fixture
def loccheck_verify(request: pytest.FixtureRequest):
    """Verify a claim with this session's loccheck options and return its `VerifyResult`::

        def test_heads_beat_random(loccheck_verify):
            result = loccheck_verify("claims/iti_truthful.yaml", random_locations__n=49)
            assert result.p_value <= 0.02 and result.optimality_ratio > 0.5

    A relative claim path is taken relative to the rootdir. Overrides are claim fields, dotted
    (``**{"random_locations.n": 49}``) or with ``__`` for the dots; they win over
    ``--loccheck-n-null``. The report is written to ``<report dir>/<claim name>/``.
    """
    state = request.config.stash[SESSION_KEY]
    root = Path(request.config.rootpath)

    def run(claim_path: str | os.PathLike, /, **overrides: Any):
        from loccheck.claim import load_claim

        path = Path(claim_path)
        claim = load_claim(path if path.is_absolute() else root / path)
        return state.verify(claim, {k.replace("__", "."): v for k, v in overrides.items()})

    return run


# --- collection and items ------------------------------------------------------------------------

class ClaimFile(pytest.File):
    """One claim file; yields one ClaimItem named after the file's stem."""

    def collect(self):
        from loccheck.claim import load_claim

        try:
            claim = load_claim(self.path)
        except ClaimError as err:
            raise self.CollectError(_relative_error(err, self.config)) from None
        state = self.config.stash[SESSION_KEY]
        other = state.names.setdefault(claim.name, self.path)
        if other != self.path:
            raise self.CollectError(f"{state.shown(self.path)}: claim name {claim.name!r} is also "
                                    f"the name of {state.shown(other)}; their reports would "
                                    "collide: rename one file")
        yield ClaimItem.from_parent(self, name=claim.name, claim=claim)


class ClaimMismatch(Exception):
    """The verdict is not the one the claim file expects."""

    def __init__(self, result):
        super().__init__(result.verdict)
        self.result = result


class ClaimRunError(Exception):
    """A LoccheckError while verifying (bad model, data, location): shown as one line."""


class ClaimItem(pytest.Item):
    def __init__(self, *, claim, **kwargs):
        super().__init__(**kwargs)
        self.claim = claim
        self.add_marker("claim")

    def runtest(self) -> None:
        state = self.config.stash[SESSION_KEY]
        try:
            result = state.verify(self.claim)
        except LoccheckError as err:
            from loccheck.run.result import expected_words

            message = _relative_error(err, self.config) if isinstance(err, ClaimError) else str(err)
            state.rows.append({"claim": self.nodeid, "verdict": "ERROR",
                               "expected": expected_words(self.claim.expect), "error": message})
            raise ClaimRunError(message) from None
        report = Path(result.report_dir) / "report.md"
        state.rows.append({"claim": self.nodeid, "verdict": result.verdict,
                           "expected": result.expected, "as_expected": result.matches_expectation,
                           "p_value": result.p_value,
                           "n_null": result.n_null, "claim_gain": result.claim_gain,
                           "ceiling_gain": result.ceiling_gain, "report": report,
                           "report_link": _link(report, state.settings.report_dir)})
        if not result.matches_expectation:
            raise ClaimMismatch(result)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ClaimMismatch):
            return evidence_text(excinfo.value.result, self.config.stash[SESSION_KEY])
        if isinstance(excinfo.value, ClaimRunError):
            return f"loccheck: error: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        # 0-based line where the claim's mapping starts (the first key after any comments).
        line = self.claim.error((), "").line
        return self.path, (line - 1) if line else 0, f"claim: {self.name}"


def _bundle_of(claim, settings: Settings) -> Path:
    """The bundle a replayed claim is derived from; a claim that names none cannot be replayed."""
    folder = settings.evidence_folder(claim)
    if folder is None:
        raise claim.error("evidence.bundle", "replaying needs the claim's evidence bundle: set evidence.bundle, "
                                             "or the evidence folder (--loccheck-evidence DIR, ini loccheck_evidence)")
    return folder


def _terminal_writer(config: pytest.Config):
    """A function that writes one line to the terminal while a test runs, past the capture."""
    def write(line: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(line)
        else:
            reporter.write_line(line)
    return write


# --- text ----------------------------------------------------------------------------------------

def evidence_text(result, state: LoccheckSession) -> str:
    """The failure body: what was expected, what came out, and the numbers behind it. The
    first line is short: pytest's summary line (-ra) repeats it after the item id."""
    report = Path(result.report_dir) / "report.md"
    return "\n".join([
        f"verdict {result.verdict}, expected {result.expected}",
        *([f"tests: {result.per_test}"] if result.per_test else []),
        f"{'editing ' if result.per_test else ''}p-value: {result.p_value:.4g} with N = {result.n_null} random locations"
        f"{_fitted(result)} "
        f"(alpha = {result.alpha:g})",
        f"{result.metric} gain: claim {result.claim_gain:+.4g}, whole model "
        f"{result.ceiling_gain:+.4g}, null mean {result.null_mean:+.4g}",
        f"why: {result.verdict_reason}",
        f"report: {state.shown(report)}",
    ])


def _fitted(result) -> str:
    """", 1 fitted (sequential)" when the null stopped early, else nothing."""
    return f", {result.n_null_fitted} fitted (sequential)" if result.test["stopped_early"] else ""


def _summary_line(row: dict, state: LoccheckSession) -> str:
    if row["verdict"] == "ERROR":
        return f"{row['claim']}: ERROR: {row['error']}"
    mark = "as expected" if row.get("as_expected", row["verdict"] == row["expected"]) else f"expected {row['expected']}"
    return (f"{row['claim']}: {row['verdict']} ({mark}), p = {row['p_value']:.4g}, "
            f"N = {row['n_null']}, claim gain {row['claim_gain']:+.4g}, whole model "
            f"{row['ceiling_gain']:+.4g} -> {state.shown(row['report'])}")


def _relative_error(err: ClaimError, config: pytest.Config) -> str:
    """The ClaimError's one line with its path relative to the invocation folder."""
    if err.path is not None:
        path = Path(err.path)
        try:
            err.path = path.resolve().relative_to(Path(config.invocation_params.dir).resolve())
        except ValueError:
            pass
    return str(err)


def _link(report: Path, report_dir: Path) -> str:
    """Link to a claim's report.md from index.md (which lives in report_dir)."""
    try:
        return Path(os.path.relpath(report, report_dir)).as_posix()
    except ValueError:   # another drive (Windows)
        return report.as_posix()
