"""loccheck: put localization claims on trial.

    loccheck verify CLAIM...            fit, test, write reports/<claim>/ (exit 0, 1 or 2)
    loccheck check CLAIM...             replay each verdict from its evidence bundle (no model,
                                        no torch); --audit K refits K of its edits
    loccheck report RESULT_JSON         re-render report.md and figures (no model, no torch)
    loccheck schema                     print the claim files' JSON Schema
    loccheck init NAME                  write claims/NAME.yaml, a commented claim template
    loccheck localize CLAIM             pin the sites the claim's heuristic selects
    loccheck trace-vs-edit CLAIM        tracing effect against one-fact edit success per layer
    loccheck stability CLAIM            how often the heuristic selects the claim again on resampled
                                        questions (--bootstrap B), the verdict on S seeds (--splits S)

Exit codes: 0 when every verdict is the one its claim expects (SUPPORTED when it states none),
or the command succeeded; 1 when some verdict is not; 2 on bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from loccheck import __version__
from loccheck.errors import LoccheckError, LoccheckWarning, printable
from loccheck.options import add_cli_options, positive_int, settings_from_cli
from loccheck.claim.sections import MAX_BOOTSTRAP
from loccheck.run.stability import MAX_SPLITS


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too (a CI log greps for `loccheck: error:`), exit 2."""

    def error(self, message: str):
        self.exit(2, f"loccheck: error: {printable(message)} (see `{self.prog} --help`)\n")


def _at_least_one(text: str) -> int:
    """A count as the shared options read one (`options.positive_int`), said in one message."""
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}") from None


def _count_between(low: int, high: int):
    """A count from `low` to `high`, said in one message when it is not."""
    def count(text: str) -> int:
        try:
            value = positive_int(text)
        except argparse.ArgumentTypeError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, got {text!r}")
        return value
    return count


def _add_trace_vs_edit(sub) -> None:
    """`loccheck trace-vs-edit`'s arguments."""
    tve = sub.add_parser("trace-vs-edit", help="does localization inform editing: tracing effects and "
                                               "one-fact edit success at every layer, regressed (Hase et al.)")
    tve.add_argument("claim", type=Path, metavar="CLAIM", help="a claim of MLP layers found by causal tracing")
    tve.add_argument("--corruption", nargs="+", choices=("noise", "subject_flip"), default=None,
                     help="tracing corruption(s), side by side (default: the claim's)")
    tve.add_argument("--layers", nargs="+", type=int, default=None, metavar="L",
                     help="layers to edit and trace (default: every layer)")
    tve.add_argument("--measures", choices=("hase", "loccheck"), default="hase",
                     help="hase (default): rewrite score, fraction restored (max over tokens, window 5), "
                          "layer x tracing, as Hase et al.; loccheck: log-prob. margin gained, indirect "
                          "effect at the claim's aggregate and window, layer + tracing")
    tve.add_argument("--window", type=int, default=None, metavar="N",
                     help="MLP layers restored together in tracing (default: 5 for hase, the claim's "
                          "for loccheck)")
    tve.add_argument("--out", type=Path, default=None,
                     help="report folder (default: reports/<claim>_trace_vs_edit)")
    add_cli_options(tve, only=("cache_dir", "executor", "ray_address"))
    tve.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_stability(sub) -> None:
    """`loccheck stability`'s arguments."""
    stab = sub.add_parser("stability", help="how stable a claim is (its heuristic on bootstrap resamples of "
                                            "the train questions) and its verdict (on several seeds)")
    stab.add_argument("claim", type=Path, metavar="CLAIM", help="claim YAML file")
    stab.add_argument("--bootstrap", type=_count_between(2, MAX_BOOTSTRAP), default=None, metavar="B",
                      help=f"rerun the heuristic on B bootstrap resamples of the train questions (2 to "
                           f"{MAX_BOOTSTRAP}; 20 gives each site's frequency to about +-0.2)")
    stab.add_argument("--splits", type=_count_between(2, MAX_SPLITS), default=None, metavar="S",
                      help=f"verify the claim on S seed shifts (2 to {MAX_SPLITS}): split, edits, null and "
                           "ablation seeds moved together; each is a whole verification")
    stab.add_argument("--out", type=Path, default=None,
                      help="report folder (default: reports/<claim>_stability): stability.md, stability.json, "
                           "and each seed's report in seed_shift_<s>/")
    add_cli_options(stab, only=("cache_dir", "executor", "ray_address"))
    stab.add_argument("--device", default=None, help="overrides model.device (auto, cpu, cuda, cuda:N)")
    stab.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loccheck", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"loccheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="verify localization claims and write evidence reports")
    verify.add_argument("claims", nargs="+", type=Path, metavar="CLAIM", help="claim YAML file(s)")
    add_cli_options(verify)   # --report-dir/--out, --cache-dir, --n-null, --executor, --refresh
    verify.add_argument("--device", default=None, help="overrides model.device (auto, cpu, cuda, cuda:N)")
    bar = verify.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show progress bars even when stderr is not a terminal (default: bars "
                          "on a terminal, one plain line per finished edit elsewhere)")
    bar.add_argument("--quiet", dest="progress", action="store_false", help="no progress output")
    verify.add_argument("--debug", action="store_true", help="show tracebacks")

    check = sub.add_parser("check", help="replay claims from their evidence bundles: every statistic, "
                                         "the verdict and the report again, with no model and no torch")
    check.add_argument("claims", nargs="+", type=Path, metavar="CLAIM", help="claim YAML file(s)")
    check.add_argument("--evidence", type=Path, default=None, metavar="DIR",
                       help="folder of the bundles `verify --evidence DIR` wrote: each claim's is "
                            "DIR/<claim name>/ (default: the claim's evidence.bundle, else evidence)")
    add_cli_options(check, only=("report_dir", "cache_dir", "n_null"))
    check.add_argument("--audit", type=_at_least_one, default=None, metavar="K",
                       help="also refit K of each bundle's edits (drawn with a seed from its manifest) "
                            "on this machine and compare their gains; needs the model")
    check.add_argument("--device", default=None, help="where --audit fits (overrides model.device)")
    check.add_argument("--debug", action="store_true", help="show tracebacks")

    localize = sub.add_parser("localize", help="run the claim's heuristic and write a new claim "
                                               "file that pins the sites it selects")
    localize.add_argument("claim", type=Path, metavar="CLAIM", help="claim YAML file")
    localize.add_argument("--top-k", type=_at_least_one, default=None, metavar="K",
                          help="number of sites (default: heuristic.top_k, else the claimed count)")
    localize.add_argument("--out", type=Path, default=None,
                          help="new claim file (default: <claim>_localized.yaml beside the claim)")
    add_cli_options(localize, only=("cache_dir",))
    localize.add_argument("--debug", action="store_true", help="show tracebacks")

    _add_trace_vs_edit(sub)
    _add_stability(sub)

    report = sub.add_parser("report", help="re-render report.md and the figures from a stored "
                                           "result.json (no model needed)")
    report.add_argument("result", type=Path, metavar="RESULT_JSON", help="a result.json written by verify")
    report.add_argument("--out", type=Path, default=None,
                        help="report folder (default: the folder of RESULT_JSON; another folder "
                             "also gets a copy of result.json)")
    report.add_argument("--debug", action="store_true", help="show tracebacks")

    schema = sub.add_parser("schema", help="print the JSON Schema of claim files (for editors)")
    schema.add_argument("--debug", action="store_true", help="show tracebacks")

    models = sub.add_parser("models", help="list the model families loccheck can load and where each "
                                           "one's head and MLP sites are hooked")
    models.add_argument("--debug", action="store_true", help="show tracebacks")

    init = sub.add_parser("init", help="write a commented claim template that loads as it is")
    init.add_argument("name", metavar="NAME",
                      help="claim name (writes claims/NAME.yaml) or a path ending in .yaml/.yml")
    init.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, LoccheckWarning):  # ours are meant for users: one line, no source
        print(f"loccheck: warning: {printable(str(message))}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    commands = {"verify": _verify, "check": _check, "localize": _localize, "report": _report, "schema": _schema,
                "init": _init, "trace-vs-edit": _trace_vs_edit, "models": _models, "stability": _stability}
    try:
        return commands[args.command](args)
    except LoccheckError as err:
        if args.debug:
            raise
        print(f"loccheck: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loccheck: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # `loccheck schema | head`: the reader left; say nothing more
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _models(args) -> int:
    from tabulate import tabulate

    from loccheck.models.families import family_table

    rows = family_table()
    print(tabulate([[r["family"], r["heads"], r["mlp"], r["notes"]] for r in rows],
                   headers=["model_type", "head sites (slices of)", "MLP sites", "notes"], tablefmt="github"))
    print("\nEvery model passes loccheck's structural checks (heads, mlp, logits) when it is loaded; an "
          "unknown model_type is accepted under the first layout above whose checks it passes.")
    return 0


def _localize(args) -> int:
    import yaml

    from loccheck.claim import load_claim
    from loccheck.files import write_bytes_atomic, write_text_atomic
    from loccheck.heuristics import HEURISTICS
    from loccheck.run.verify import propose_location

    claim = load_claim(args.claim)
    sites, scores, proposal = propose_location(claim, top_k=args.top_k,
                                               cache_dir=settings_from_cli(args).cache_dir)
    config = claim.effective_config()
    out = args.out or args.claim.with_name(f"{args.claim.stem}_localized.yaml")
    location = {"sites": [str(s) for s in sites], "from_heuristic": False}
    basis = None
    if sites[0].kind == "subspace":      # a subspace is pinned as a file of its basis beside the claim
        from loccheck.heuristics.direction_probe import direction_file_bytes

        basis = (out.with_suffix(".npy"), direction_file_bytes(proposal.raw.basis_of(sites[0])))
        location = {"subspace": {"layer": sites[0].layer, "basis": basis[0].name, "key": None,
                                 "sha256": sites[0].basis.removeprefix("sha256:")}, "from_heuristic": False}
    config["location"] = location
    pinned, why = HEURISTICS[claim.heuristic.method].pinned(proposal, sites, scores)
    config["heuristic"] = {**config["heuristic"], "top_k": sites[0].dim if basis else len(sites), **pinned}
    header = f"# Written by `loccheck localize {args.claim}`: {why}\n"
    if basis is not None:
        write_bytes_atomic(basis[1], basis[0])
    write_text_atomic(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True), out)
    load_claim(out)  # what we wrote must be a valid claim
    print(f"{out}: " + ", ".join(f"{s} ({scores[str(s)]:.3f})" for s in sites))
    return 0


def _verify(args) -> int:
    from loccheck.claim import load_claim
    from loccheck.run.verify import verify

    settings = settings_from_cli(args)
    if settings.replay:
        return _check(args)
    claims = _claims(args, settings)
    settings.executor_instance   # an executor that cannot work (a Ray address nothing listens at) fails now
    # Every check that can be made before fitting, for every claim, before any is fitted.
    inputs = [_inspected(c, settings, args.progress) for c in claims]
    status = 0
    for claim, checked in zip(claims, inputs):
        result = verify(claim, out_dir=settings.claim_report_dir(claim.name), inputs=checked,
                        progress=args.progress, evidence=settings.evidence_folder(claim),
                        **settings.verify_kwargs())
        print(_result_line(claim, result))
        status = max(status, 0 if result.matches_expectation else 1)
    return status


def _claims(args, settings) -> list:
    """The claim files, every one loaded and checked before any work, with the options' overrides."""
    from loccheck.claim import load_claim

    overrides = {**settings.overrides(), **({"model.device": args.device} if getattr(args, "device", None) else {})}
    claims = [load_claim(path).with_overrides(overrides) for path in args.claims]
    if len({c.name for c in claims}) < len(claims):
        raise LoccheckError(next(
            f"{a.path} and {b.path} share the file name {a.name!r}, so both reports would go to "
            f"{settings.claim_report_dir(a.name)}; rename one" for i, a in enumerate(claims)
            for b in claims[i + 1:] if a.name == b.name))
    return claims


def _result_line(claim, result, how: str = "") -> str:
    fitted = f" ({result.n_null_fitted} fitted)" if result.test["stopped_early"] else ""
    tests, p = (f" [{result.per_test}]", "editing p") if result.per_test else ("", "p")
    return (f"{claim.path}: {result.verdict}{tests} ({p} = {result.p_value:.4g}, N = {result.n_null}{fitted}, "
            f"claim gain {result.claim_gain:+.4g}, whole model {result.ceiling_gain:+.4g}, "
            f"null mean {result.null_mean:+.4g}){how}; expected {result.expected}: "
            f"{'as expected' if result.matches_expectation else 'NOT as expected'}; "
            f"report: {Path(result.report_dir) / 'report.md'}")


def _check(args) -> int:
    """Replay (and with --audit, refit a sample of) each claim's evidence bundle."""
    from loccheck.files import check_writable_folder
    from loccheck.run.replay import audit, replay, write_replayed

    settings = settings_from_cli(args)
    claims = _claims(args, settings)
    bundles = [settings.evidence_folder(claim) or Path("evidence") / claim.name for claim in claims]
    replayed = []
    for claim, bundle in zip(claims, bundles):     # every bundle is checked before any report is written
        check_writable_folder(settings.claim_report_dir(claim.name), "report folder")
        replayed.append(replay(claim, bundle, write_report=False))
    status = 0
    for claim, bundle, result in zip(claims, bundles, replayed):
        result = write_replayed(result, settings.claim_report_dir(claim.name))
        print(_result_line(claim, result, f", replayed from {bundle}"))
        if getattr(args, "audit", None):
            rows = audit(claim, bundle, args.audit, cache_dir=settings.cache_dir,
                         note=lambda line: print(line, file=sys.stderr))
            worst = max((abs(r["here"] - r["recorded"]) / r["tolerance"] for r in rows if r["tolerance"] > 0),
                        default=0.0)
            print(f"{claim.path}: audit passed: {args.audit} refitted edits and the unedited model agree with "
                  f"the bundle on {len(rows)} gains and scores (largest difference {worst:.2f} of its tolerance)")
        status = max(status, 0 if result.matches_expectation else 1)
    return status


def _inspected(claim, settings, progress):
    """`run.verify.inspect`, whose errors all name the claim file, as a phase of the run."""
    from loccheck.progress import Phases, progress_mode
    from loccheck.run.verify import CHECKING, inspect

    with Phases(progress_mode(progress), title=f"{claim.name} ")(CHECKING, announce=False):
        return inspect(claim, out_dir=settings.claim_report_dir(claim.name), cache_dir=settings.cache_dir,
                       evidence=settings.evidence_folder(claim))


def _trace_vs_edit(args) -> int:
    from loccheck.claim import load_claim
    from loccheck.studies.trace_vs_edit.command import trace_vs_edit

    claim = load_claim(args.claim)
    settings = settings_from_cli(args)
    out = args.out or Path("reports") / f"{claim.name}_trace_vs_edit"
    result = trace_vs_edit(claim, corruptions=args.corruption, out_dir=out, cache_dir=settings.cache_dir,
                           executor=settings.executor_instance, layers=args.layers, measures=args.measures,
                           window=args.window)
    for c, a in result["analyses"].items():
        p = "n/a" if a["f_test"]["p"] is None else f"{a['f_test']['p']:.3g}"
        print(f"{claim.path} ({c} tracing, {args.measures} measures): R^2 layer {a['r2']['layer']:.3f}, "
              f"tracing {a['r2']['tracing']:.3f}, {a['joint']} {a['r2']['both']:.3f} "
              f"({a['r2']['added']:+.3f}), F-test p = {p}")
    print(f"report: {out / 'report.md'}")
    return 0


def _stability(args) -> int:
    from loccheck.claim import load_claim
    from loccheck.files import write_json_atomic, write_text_atomic
    from loccheck.report.stability import stability_markdown
    from loccheck.run.stability import verdict_stability
    from loccheck.run.verify import claim_stability, verify

    if args.bootstrap is None and args.splits is None:
        raise LoccheckError("stability needs --bootstrap B (the claim's stability), --splits S (the verdict's), "
                            "or both")
    claim = load_claim(args.claim)
    settings = settings_from_cli(args)
    if args.device is not None:
        claim = claim.with_overrides({"model.device": args.device})
    out = args.out or Path("reports") / f"{claim.name}_stability"

    def note(text: str) -> None:
        print(f"loccheck: {claim.name} {text}", file=sys.stderr, flush=True)
    record = {"claim_name": claim.name, "claim_file": str(claim.path),
              "command": f"loccheck stability {args.claim}" + "".join(
                  f" --{k} {v}" for k, v in (("bootstrap", args.bootstrap), ("splits", args.splits)) if v)}
    if args.bootstrap is not None:
        resampled = claim.with_overrides({"stability.bootstrap": args.bootstrap})
        note(f"rerunning the heuristic ({claim.heuristic.method}) on {args.bootstrap} bootstrap resamples ...")
        record["claim_stability"] = s = claim_stability(resampled, cache_dir=settings.cache_dir, note=note)
        print(f"{claim.path}: the heuristic selects the whole claimed set again in {s['whole_set']['count']} of "
              f"{args.bootstrap} resamples; each claimed site in " + ", ".join(
                  f"{site} {f['count']}" for site, f in s["per_site"].items()))
    if args.splits is not None:
        def verify_one(shifted, shift):
            return verify(shifted, out_dir=out / f"seed_shift_{shift}", cache_dir=settings.cache_dir,
                          executor=settings.executor_instance, progress=None)
        record["verdict_stability"] = v = verdict_stability(claim, args.splits, verify_one=verify_one, note=note)
        print(f"{claim.path}: verdicts on {args.splits} seeds: " + ", ".join(
            f"{name} {n}" for name, n in v["verdicts"].items()) + "; combined p (2 x median): " + ", ".join(
            f"{name} {c['twice_median']:.3g}" for name, c in v["combined"].items()))
    write_text_atomic(stability_markdown(record), out / "stability.md")
    write_json_atomic(record, out / "stability.json")
    print(f"report: {out / 'stability.md'}")
    return 0


# Keys a result.json of any schema version has.
_RESULT_KEYS = ("metric", "claim_name")
# A result of 10,000 null edits with their loss curves is a few tens of MB; far more is not one.
MAX_RESULT_BYTES = 256 << 20


def _read_result(path: Path) -> tuple[bytes, dict]:
    """The bytes and the JSON of a result file; a FIFO, a device, an oversized file or JSON
    nested beyond what Python parses is one error line, read no further than it must be."""
    import json

    from loccheck.userfiles import read_regular_file

    try:
        raw = read_regular_file(path, MAX_RESULT_BYTES + 1)
    except OSError as err:
        raise LoccheckError(f"{path}: cannot read result file: {err.strerror or err}") from None
    if len(raw) > MAX_RESULT_BYTES:
        raise LoccheckError(f"{path}: result file is larger than {MAX_RESULT_BYTES} bytes (256 MiB); "
                            "a result.json is a few MB")
    try:
        result = json.loads(raw.decode("utf-8"))
    except ValueError as err:   # JSONDecodeError, UnicodeDecodeError
        raise LoccheckError(f"{path}: not valid JSON: {err}") from None
    except RecursionError:
        raise LoccheckError(f"{path}: JSON nested too deeply for a result.json") from None
    missing = [k for k in _RESULT_KEYS if not isinstance(result, dict) or k not in result]
    if missing:
        raise LoccheckError(f"{path}: not a loccheck result.json (no {', '.join(map(repr, missing))})")
    return raw, result


def _report(args) -> int:
    import shutil
    import tempfile

    from loccheck.files import check_writable_folder, write_bytes_atomic
    from loccheck.report import render_report

    raw, result = _read_result(args.result)
    out = args.out if args.out is not None else args.result.parent
    check_writable_folder(out, "report folder")
    # Rendered aside first: a result that fails halfway leaves no folder and no half a report.
    staging = Path(tempfile.mkdtemp(prefix="loccheck-report-"))
    try:
        try:
            name = render_report(result, staging).name
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as err:
            raise LoccheckError(f"{args.result}: not a complete loccheck result.json ({type(err).__name__}: "
                                f"{err})") from None
        for file in sorted(staging.iterdir()):
            write_bytes_atomic(file.read_bytes(), out / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if args.out is not None and out.resolve() != args.result.parent.resolve():
        write_bytes_atomic(raw, out / "result.json")   # the folder stays self-contained, the file as it was
    print(out / name)
    return 0


def _schema(args) -> int:
    import json

    from loccheck.claim import claim_json_schema

    print(json.dumps(claim_json_schema(), indent=2))
    return 0


CLAIM_TEMPLATE = """\
# loccheck claim {name!r}. Verify it with `loccheck verify {path}` or `pytest -m claim`;
# the evidence report lands in reports/{name}/. Every key except `claim` and `location` has a
# default; `loccheck schema` prints them all with their descriptions.

# The claim, in one sentence on one line.
claim: "Behaviour B of this model is localized in these attention heads."

model:
  name: smollm2-135m-instruct    # or a local Hugging Face folder, a .gguf file, a hub id
  device: auto                   # auto, cpu, cuda, cuda:N
  dtype: float32                 # weights' dtype; edits train in float32

behavior:
  dataset: truthfulqa            # or jsonl: one {{"prompt", "chosen", "rejected", "group"}} per line
  # path: data/pairs.jsonl       # needed for jsonl; relative to this file
  prompt_format: auto            # chat template when the tokenizer has one, else "Q: ... A:"
  max_questions: 50
  split: {{train: 0.4, validation: 0.12, test: 0.48, seed: 0}}   # by question, never by pair

location:
  sites: [L0H0, L0H1]            # the claimed heads, L{{layer}}H{{head}}, 0-based: replace these

heuristic:
  method: manual                 # or probe (with location.from_heuristic: true and top_k)
  citation: "Where the claim was published"

edits:                           # the first one's test gives the verdict; add `- method: iti`
  - method: optimal              # for ITI's heuristic edit side by side
    objective: ipo               # dpo has no optimum, so it cannot give the verdict
    batch_size: 4
    learning_rate: 1.0e-2        # claimed and random locations alike
    ceiling_learning_rate: 1.0e-4  # the whole model's edit, the same for every claim on the model
    max_epochs: 10               # each edit trains until it converges, at most this many epochs
    convergence_tol: 0.02
    seed: 0

metrics: [preference_margin, preference_accuracy]   # reported for every edit

random_locations:
  n: 19                          # the null: alpha = 0.05 needs n >= 19 (p >= 1/(n + 1))
  seed: 0

verdict:
  metric: preference_margin      # or preference_accuracy
  alpha: 0.05                    # significance level against random locations
  rho: 0.9                       # share of the whole-model gain the heads must reach

# expect: FALSIFIED              # the verdict this file expects (default SUPPORTED)
"""


def _init(args) -> int:
    from loccheck.claim import load_claim
    from loccheck.files import write_text_atomic

    name = args.name
    if name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name:
        path = Path(name)
    else:
        path = Path("claims") / f"{name}.yaml"
    if not path.stem or path.stem.startswith("."):
        raise LoccheckError(f"claim name must be a file name such as 'iti_truthful', got {name!r}")
    if path.exists():
        raise LoccheckError(f"{path} already exists; not overwriting it (choose another name or "
                            "remove the file)")
    write_text_atomic(CLAIM_TEMPLATE.format(name=path.stem, path=path.as_posix()), path)
    load_claim(path)   # the template must load as written
    print(path)
    return 0
