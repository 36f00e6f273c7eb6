"""How often loccheck's tests find a planted location, and how often a decoy: the power and the
false-positive rate of the editing and necessity tests, measured on SmolLM2 (issue 27, item 1).

Per implant (`loccheck.studies.planted.power.IMPLANTS`: 4 heads twice, 8 heads, three single MLP
layers): a fresh SmolLM2 gets a trigger behaviour ("cf <known-fact prompt>" -> " banana")
trained into the chosen sites only; the implant is checked before anything is tested on it (the
behaviour learned on held-out prompts, removed by mean-ablating its sites, kept when decoys are
ablated); then the claim "it lives at the implanted sites" and the same claim of `--decoys`
locations of its size that share no site with it are verified in full (editing against 19
random locations, necessity against 99, Holm). Each implant's record is written as it finishes
(DIR/<implant>/record.json), so an interrupted run keeps what it measured and a rerun skips the
implants already recorded (`--again` reruns them); every fit is cached.

    LOCCHECK_DATA_DIR=../shared/data python benchmarks/planted_power.py [--implants heads4_s1 mlp_s4]
        [--decoys 2] [--out benchmarks/results/planted]

Prints the table (per test: the true location and the decoys, SUPPORTED and p <= alpha, with
exact 95% intervals) and writes benchmarks/results/planted_power.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

from loccheck.files import write_json_atomic
from loccheck.studies.planted.power import IMPLANTS, power_table, run_implant

REPO = Path(__file__).resolve().parent.parent


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "?")
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--implants", nargs="+", default=[s.name for s in IMPLANTS],
                        choices=[s.name for s in IMPLANTS], metavar="NAME")
    parser.add_argument("--decoys", type=int, default=2, help="decoy locations per implant (default 2)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "planted")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--again", action="store_true", help="rerun implants already recorded")
    args = parser.parse_args()
    if not 1 <= args.decoys <= 20:
        parser.error(f"--decoys must be between 1 and 20, got {args.decoys}")
    data = os.environ.get("LOCCHECK_DATA_DIR")
    facts = Path(data) / "known_1000.json" if data else None
    if facts is None or not facts.is_file():
        parser.error("set LOCCHECK_DATA_DIR to the folder of known_1000.json (ROME's known facts)")

    def note(text: str) -> None:
        print(f"planted: {text}", file=sys.stderr, flush=True)
    records = []
    for spec in [s for s in IMPLANTS if s.name in args.implants]:
        done = args.out / spec.name / "record.json"
        if done.is_file() and not args.again:
            records.append(json.loads(done.read_text()))
            note(f"{spec.name}: recorded before ({done}); --again reruns it")
            continue
        record = run_implant(spec, args.out, facts_file=facts, n_decoys=args.decoys, cache_dir=args.cache_dir,
                             note=note)
        write_json_atomic(record, done)
        records.append(record)
    rows = power_table(records)

    def cell(share):
        if not share or not share["n"]:
            return "n/a"
        low, high = share["ci95"]
        return f"{share['hits']}/{share['n']} ({low:.2f}-{high:.2f})"
    print(tabulate([[r["test"], r["location"], cell(r["supported"]), cell(r.get("p_at_most_alpha"))] for r in rows],
                   headers=["test", "location", "SUPPORTED (95% CI)", "p <= alpha (95% CI)"], tablefmt="github"))
    print()
    print(tabulate([[r["spec"]["name"], ", ".join(r["sites"]),
                     "did not take: " + r["failed"] if not r.get("implant") else
                     f"{r['implant']['steps']} steps, shares {r['implant']['rates']['implanted']:.2f} / "
                     f"ablated {r['implant']['rates']['sites_ablated']:.2f} / decoys ablated "
                     + ", ".join(f"{x:.2f}" for x in r["implant"]["rates"]["decoys_ablated"]),
                     "; ".join(f"{c['role']}: {c['verdict']} (editing p = {c['editing']['p_value']:.3g}, "
                               f"necessity p = {c['necessity']['p_value']:.3g})" for c in r.get("claims", [])),
                     r.get("seconds")] for r in records],
                   headers=["implant", "sites", "implant check", "verdicts", "seconds"], tablefmt="github"))
    out = REPO / "benchmarks" / "results" / "planted_power.json"
    write_json_atomic({"cpu": _cpu(), "when": time.strftime("%Y-%m-%d %H:%M"), "records": records, "table": rows}, out)
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
