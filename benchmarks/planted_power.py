"""How often loccheck's tests find a planted location, and how often a decoy: the power and the
false-positive rate of the editing and necessity tests, measured on SmolLM2 (issue 27, item 1).

Per implant (`loccheck.studies.planted.power.IMPLANTS`: 4 heads four times, 8 heads three times, 16
heads, eight single MLP layers): a fresh SmolLM2 gets a trigger behaviour ("cf <known-fact prompt>" ->
" banana") trained into the chosen sites only; the implant is checked before anything is tested on
it (the behaviour learned on held-out prompts, removed by mean-ablating its sites, kept when decoys
are ablated); then the claim "it lives at the implanted sites" and the same claim of `--decoys`
locations of its size that share no site with it are verified in full (Holm over editing and
necessity; heads against 19 random sets for editing and 99 for necessity, an MLP layer against every
other layer). Each implant's record is written as it finishes (DIR/<implant>/record.json), so an
interrupted run keeps what it measured and a rerun skips the implants already recorded (`--again`
reruns them); every fit is cached.

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


def _implant_row(record: dict) -> list:
    """One implant in a row: how it took (shares of the 80 held-out prompts), the true location's
    gains, drops and p-values, and the decoys' p-values."""
    head = [record["spec"]["name"], ", ".join(record["sites"])]
    if not record.get("implant"):
        return head + ["did not take: " + record["failed"], "", "", "", "", "", record.get("seconds")]
    rates = record["implant"]["rates"]
    took = (f"{record['implant']['steps']}; {rates['implanted']:.0%} / {rates['sites_ablated']:.0%} / "
            + ", ".join(f"{x:.0%}" for x in rates["decoys_ablated"]))
    true = next(c for c in record["claims"] if c["role"] == "true")
    decoys = [c for c in record["claims"] if c["role"] != "true"]
    return head + [took, f"{true['claim_gain']:.2f} ({true['ceiling_gain']:.2f}), p = {true['editing']['p_value']:.3g}",
                   f"{true['claim_drop']:.2f}, p = {true['necessity']['p_value']:.3g}", true["verdict"],
                   ", ".join(f"{c['editing']['p_value']:.3g}" for c in decoys),
                   ", ".join(f"{c['necessity']['p_value']:.3g}" for c in decoys), record.get("seconds")]


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
    kinds = {"head": "heads", "mlp": "MLP layer", "all": "all"}
    print(tabulate([[kinds[r["sites"]], r["test"], r["location"], cell(r["supported"]), cell(r.get("p_at_most_alpha"))]
                    for r in rows],
                   headers=["implanted in", "test", "location", "SUPPORTED (95% CI)", "p <= alpha (95% CI)"],
                   tablefmt="github"))
    print()
    print(tabulate([_implant_row(r) for r in records],
                   headers=["implant", "sites", "implant: steps; learned / sites ablated / decoys ablated",
                            "true: gain (whole model), editing p", "true: drop, necessity p", "true: verdict",
                            "decoys: editing p", "decoys: necessity p", "seconds"], tablefmt="github"))
    out = REPO / "benchmarks" / "results" / "planted_power.json"
    write_json_atomic({"cpu": _cpu(), "when": time.strftime("%Y-%m-%d %H:%M"), "records": records, "table": rows}, out)
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
