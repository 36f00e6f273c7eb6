"""`loccheck verify CLAIM...`: exit 0 when every verdict is the one the claim expects
(SUPPORTED when it states none), 1 when some verdict is not, 2 on bad input."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from loccheck import __version__
from loccheck.errors import LoccheckError, LoccheckWarning


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loccheck", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"loccheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="verify localization claims and write evidence reports")
    verify.add_argument("claims", nargs="+", type=Path, metavar="CLAIM", help="claim YAML file(s)")
    verify.add_argument("--out", type=Path, default=None,
                        help="report folder (default: reports/<claim file stem>; with several "
                             "claims, one sub-folder per claim inside it)")
    verify.add_argument("--n-random", type=int, default=None, metavar="N",
                        help="number of random locations (overrides random_locations.n)")
    verify.add_argument("--device", default=None, help="overrides model.device (auto, cpu, cuda, cuda:N)")
    verify.add_argument("--cache-dir", type=Path, default=None,
                        help="cache folder (default: $LOCCHECK_CACHE_DIR, else ~/.cache/loccheck)")
    bar = verify.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show progress bars even when stderr is not a terminal")
    bar.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")
    verify.add_argument("--debug", action="store_true", help="show tracebacks")

    localize = sub.add_parser("localize", help="run the claim's probing heuristic and write a new "
                                               "claim file that pins the heads it selects")
    localize.add_argument("claim", type=Path, metavar="CLAIM", help="claim YAML file")
    localize.add_argument("--top-k", type=int, default=None, metavar="K",
                          help="number of heads (default: heuristic.top_k, else the claimed count)")
    localize.add_argument("--out", type=Path, default=None,
                          help="new claim file (default: <claim>_localized.yaml beside the claim)")
    localize.add_argument("--cache-dir", type=Path, default=None, help="cache folder")
    localize.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _overrides(args) -> dict:
    out = {}
    if args.n_random is not None:
        out["random_locations.n"] = args.n_random
    if args.device is not None:
        out["model.device"] = args.device
    return out


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, LoccheckWarning):  # ours are meant for users: one line, no source
        print(f"loccheck: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        if args.command == "localize":
            return _localize(args)
        return _verify(args)
    except LoccheckError as err:
        if args.debug:
            raise
        print(f"loccheck: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loccheck: interrupted", file=sys.stderr)
        return 130


def _localize(args) -> int:
    import yaml

    from loccheck.claim import load_claim
    from loccheck.report import write_text_atomic
    from loccheck.verification import localize

    claim = load_claim(args.claim)
    heads, accuracies, probe = localize(claim, top_k=args.top_k, cache_dir=args.cache_dir)
    config = claim.effective_config()
    config["location"] = {"heads": [str(h) for h in heads], "from_heuristic": False}
    config["heuristic"] = {**config["heuristic"], "method": "probe", "top_k": len(heads),
                           "probe_accuracies": accuracies}
    out = args.out or args.claim.with_name(f"{args.claim.stem}_localized.yaml")
    header = (f"# Written by `loccheck localize {args.claim}`: the {len(heads)} heads with the best\n"
              f"# validation accuracy of per-head logistic probes ({probe.n_train} train and\n"
              f"# {probe.n_val} validation answers; test questions unseen), pinned.\n")
    write_text_atomic(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True), out)
    load_claim(out)  # what we wrote must be a valid claim
    print(f"{out}: " + ", ".join(f"{h} ({accuracies[str(h)]:.3f})" for h in heads))
    return 0


def _verify(args) -> int:
    from loccheck.claim import load_claim
    from loccheck.verification import verify

    claims = [load_claim(path) for path in args.claims]   # every file is checked before any work
    claims = [c.with_overrides(_overrides(args)) for c in claims]
    if len({c.name for c in claims}) < len(claims):
        raise LoccheckError("several claim files share a file name; their reports would collide")
    status = 0
    for claim in claims:
        out = args.out
        if out is not None and len(claims) > 1:
            out = out / claim.name
        result = verify(claim, out_dir=out, progress=args.progress, cache_dir=args.cache_dir)
        print(f"{claim.path}: {result.verdict} (p = {result.p_value:.4g}, N = {result.n_random}, "
              f"claim gain {result.claim_gain:+.4g}, whole model {result.full_gain:+.4g}, "
              f"null mean {result.null_mean:+.4g}); expected {result.expect or 'SUPPORTED'}: "
              f"{'as expected' if result.matches_expectation else 'NOT as expected'}; "
              f"report: {Path(result.report_dir) / 'report.md'}")
        status = max(status, 0 if result.matches_expectation else 1)
    return status
