"""Options shared by `loccheck verify` and the pytest plugin: one definition per option (the
pytest-benchmark pattern), so the two front ends cannot drift apart.

    option         CLI (loccheck verify)      pytest flag                 ini key
    report dir     --report-dir DIR, --out    --loccheck-report-dir DIR   loccheck_report_dir
    cache dir      --cache-dir DIR            --loccheck-cache-dir DIR    loccheck_cache_dir
    null size      --n-null N                 --loccheck-n-null N         loccheck_n_null
    executor       --executor serial          --loccheck-executor serial  loccheck_executor
    refresh        --refresh                  --loccheck-refresh          loccheck_refresh
    evidence dir   --evidence DIR             --loccheck-evidence DIR     loccheck_evidence
    replay         --replay (or `check`)      --loccheck-replay           loccheck_replay

Precedence: a flag wins over the ini value, which wins over the claim file (for the number of
random locations) or the built-in default. Reports go to ``<report dir>/<claim name>/``.
Relative paths given as flags are relative to the working directory; in an ini file, relative
to that file's folder. The cache dir may be an fsspec URL (s3://bucket/loccheck), kept as it is.
No torch here: the plugin imports this module in every pytest session.
"""
from __future__ import annotations

import argparse
import re
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Literal

from loccheck.stats.null import MAX_N_NULL, MAX_N_NULL_WHY

EXECUTORS = ("serial", "ray")   # loccheck.run.executors.EXECUTORS; the choices are listed here so that
                          # option parsing imports no executor
DEFAULT_REPORT_DIR = "reports"


def positive_int(text: str, maximum: int | None = None, why: str = "") -> int:
    """A count of at least 1 (and at most `maximum`), for the CLI and the plugin alike."""
    # ASCII digits only: int() would read a fullwidth "３" as 3, a silent substitution
    if isinstance(text, str) and not (text.strip().isascii() and re.fullmatch(r"[+-]?[0-9_]+", text.strip())):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {_short(text)}")
    try:
        value = int(text)
    except (TypeError, ValueError):   # ValueError also for more digits than int() reads
        raise argparse.ArgumentTypeError(f"expected a whole number, got {_short(text)}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(f"must be at most {maximum} ({why}), got {_short(value)}")
    return value


def is_url(value: object) -> bool:
    return isinstance(value, str) and "://" in value


def path_or_url(text: str) -> Path | str:
    """A URL (anything with "://") as it is: Path would fold its "//" and a base folder would be
    joined onto it; anything else a Path."""
    return text if is_url(text) else Path(text)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Option:
    """One option of both front ends. `name` gives the spellings: CLI ``--{name}``, pytest
    ``--loccheck-{name}``, ini ``loccheck_{dest}``. `default` applies when neither a flag nor
    the ini file sets it; None means "the claim file (or the environment) decides"."""
    name: str
    help: str
    kind: Literal["path", "location", "int", "choice", "text", "flag"]   # location: a path or a URL
    default: Any = None
    choices: tuple[str, ...] = ()
    cli_aliases: tuple[str, ...] = ()
    metavar: str | None = None
    maximum: int | None = None    # of an "int" option; `why` says why in the error
    why: str = ""

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def ini_name(self) -> str:
        return f"loccheck_{self.dest}"

    @property
    def ini_type(self) -> str:
        return {"path": "string", "location": "string", "int": "int", "choice": "string", "text": "string",
                "flag": "bool"}[self.kind]

    def argparse_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of argparse's add_argument (pytest's addoption takes the same)."""
        if self.kind == "flag":
            return {"action": "store_true", "default": None, "help": self.help}
        convert: Callable = {"path": Path, "location": path_or_url, "int": self._int, "choice": str,
                             "text": str}[self.kind]
        kw = {"type": convert, "default": None, "help": self.help, "metavar": self.metavar}
        if self.choices:
            kw["choices"] = self.choices
        return kw

    def _int(self, text: str) -> int:
        return positive_int(text, self.maximum, self.why)

    def check(self, value: Any, where: str) -> Any:
        """Validate a value that did not come through argparse (an ini value)."""
        if self.kind == "int":
            try:
                return self._int(value)
            except argparse.ArgumentTypeError as err:
                raise ValueError(f"{where}: {err}") from None
        if self.kind == "choice" and value not in self.choices:
            raise ValueError(f"{where}: must be one of {', '.join(self.choices)}, got {value!r}")
        return value


OPTIONS: tuple[Option, ...] = (
    Option("report-dir", "folder for evidence reports: each claim's report.md and result.json go "
           f"to DIR/<claim name>/, and pytest writes DIR/index.md (default: {DEFAULT_REPORT_DIR})",
           "path", default=DEFAULT_REPORT_DIR, cli_aliases=("--out",), metavar="DIR"),
    Option("cache-dir", "cache of fitted edits and converted models; an fsspec URL (s3://, gs://, ...) "
           "keeps the fitted edits in that shared store and the rest in the default folder (default: "
           "$LOCCHECK_CACHE_DIR, else $XDG_CACHE_HOME/loccheck, else ~/.cache/loccheck)", "location",
           metavar="DIR"),
    Option("n-null", "number of random locations in the null (overrides the claim's "
           f"random_locations.n; at most {MAX_N_NULL})", "int", metavar="N", maximum=MAX_N_NULL,
           why=MAX_N_NULL_WHY),
    Option("executor", "where edits are fitted: serial (in this process) or ray (one worker per GPU, "
           "or per CPU on a CPU cluster; needs the loccheck[ray] extra)", "choice",
           default="serial", choices=EXECUTORS),
    Option("ray-address", "the Ray cluster to join with --executor ray (default: $RAY_ADDRESS, else a "
           "local cluster started for the run)", "text", metavar="ADDRESS"),
    Option("refresh", "ignore cached fits and fit every edit again (the cache is rewritten)",
           "flag", default=False),
    Option("evidence", "folder of evidence bundles, meant to be committed beside the claims: each "
           "claim's is DIR/<claim name>/; a verification writes it, a replay reads it", "path", metavar="DIR"),
    Option("replay", "derive each verdict from its evidence bundle (under the evidence folder) with no "
           "model and no torch: nothing is fitted, and missing or changed evidence fails", "flag", default=False),
)


@dataclass(frozen=True)
class Settings:
    """Resolved values of the shared options."""
    report_dir: Path
    cache_dir: Path | str | None   # str: a URL; None: LOCCHECK_CACHE_DIR, XDG_CACHE_HOME, ~/.cache (cache.cache_root)
    n_null: int | None          # None: the claim file's random_locations.n
    executor: str
    ray_address: str | None
    refresh: bool
    evidence: Path | None       # None: no bundle is written (and replay has nothing to read)
    replay: bool

    def overrides(self) -> dict[str, Any]:
        """Claim-field overrides for `verify(..., overrides=...)`."""
        return {"random_locations.n": self.n_null} if self.n_null is not None else {}

    def verify_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `verify`."""
        return {"cache_dir": self.cache_dir, "refresh": self.refresh, "executor": self.executor_instance}

    @cached_property
    def executor_instance(self):
        """One executor for the whole run: a Ray cluster is joined once, and each claim's
        workers replace the previous claim's."""
        from loccheck.run.executors import get_executor

        return get_executor(self.executor, **({"address": self.ray_address} if self.executor == "ray" else {}))

    def claim_report_dir(self, claim_name: str) -> Path:
        return self.report_dir / claim_name

    def evidence_folder(self, claim) -> Path | None:
        """A claim's evidence bundle: DIR/<claim name> under the evidence option, else the
        claim's evidence.bundle, else None (no bundle)."""
        return self.evidence / claim.name if self.evidence is not None else claim.evidence_bundle

    def replays(self, claim) -> bool:
        """Whether the plugin replays `claim`: the replay option, or the claim's evidence.replay."""
        return self.replay or claim.evidence.replay


def _settings(values: dict[str, Any]) -> Settings:
    filled = {o.dest: o.default if values.get(o.dest) is None else values[o.dest] for o in OPTIONS}
    filled["report_dir"] = Path(filled["report_dir"])
    return Settings(**filled)


# --- argparse (loccheck verify) -------------------------------------------------------------

def add_cli_options(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """Add the shared options (or those whose dest is in `only`) to an argparse (sub)parser:
    --report-dir/--out, --cache-dir, --n-null, --executor, --refresh, --evidence, --replay."""
    for opt in OPTIONS:
        if only is not None and opt.dest not in only:
            continue
        parser.add_argument(f"--{opt.name}", *opt.cli_aliases, dest=opt.dest, **opt.argparse_kwargs())


def settings_from_cli(args: argparse.Namespace) -> Settings:
    """Settings from parsed CLI flags; relative paths stay relative to the working directory."""
    return _settings({o.dest: getattr(args, o.dest, None) for o in OPTIONS})


# --- pytest ----------------------------------------------------------------------------------

def add_pytest_options(parser) -> None:
    """Add the shared options to pytest: group "loccheck", flags --loccheck-<name>, ini keys
    loccheck_<name>. Flag defaults are None so that "not given" falls through to the ini."""
    group = parser.getgroup("loccheck", "loccheck: localization claims as tests")
    for opt in OPTIONS:
        group.addoption(f"--loccheck-{opt.name}", dest=f"loccheck_{opt.dest}", **opt.argparse_kwargs())
        default = f" (default: {opt.default})" if opt.default not in (None, False) else ""
        parser.addini(opt.ini_name, opt.help.split(" (default")[0] + default, type=opt.ini_type,
                      default=None)


def settings_from_pytest(config) -> Settings:
    """Flag, else ini value, else default. Flag paths are taken relative to the invocation
    folder, ini paths relative to the ini file's folder (the rootdir when there is none), and
    the default report dir relative to the rootdir. Bad ini values raise ValueError."""
    flag_base = Path(config.invocation_params.dir)
    ini_base = Path(config.inipath).parent if config.inipath is not None else Path(config.rootpath)
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        value = config.getoption(f"loccheck_{opt.dest}")
        base = flag_base
        if value is None:
            try:
                value = config.getini(opt.ini_name)
            except (TypeError, ValueError) as err:   # e.g. loccheck_n_null = many
                raise ValueError(f"ini option {opt.ini_name}: {err}") from None
            if value == "":
                value = None
            if value is not None:
                value = opt.check(value, f"ini option {opt.ini_name}")
            base = ini_base
        if opt.kind in ("path", "location") and value is not None and not is_url(value):
            value = base / os.path.expanduser(str(value))
        values[opt.dest] = value
    if values["report_dir"] is None:
        values["report_dir"] = Path(config.rootpath) / DEFAULT_REPORT_DIR
    return _settings(values)
