"""What mean-ablating each MLP layer (or each head) does to the unedited SmolLM2 where no implant
is asked for: the next-token KL from the model as it is and the share of top tokens kept, on the
planted-truth benchmark's 80 held-out known-fact prompts without the trigger (the mean over its
160 implant prompts; `loccheck.studies.planted.implant.ablation_damage`). A layer the whole model
needs removes an implant wherever it was put, so it explains which decoys the planted benchmark
refuses and which locations beat a true MLP layer at necessity (README, "How far a verdict can be
trusted").

    LOCCHECK_DATA_DIR=../shared/data python benchmarks/ablation_damage.py [--kind mlp|head] [--seed 4]

Prints the table and writes benchmarks/results/ablation_damage_<kind>.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tabulate import tabulate

from loccheck.files import write_json_atomic

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["mlp", "head"], default="mlp")
    parser.add_argument("--seed", type=int, default=4, help="which prompts (the implant seed; default 4)")
    args = parser.parse_args()
    data = os.environ.get("LOCCHECK_DATA_DIR")
    facts = Path(data) / "known_1000.json" if data else None
    if facts is None or not facts.is_file():
        parser.error("set LOCCHECK_DATA_DIR to the folder of known_1000.json (ROME's known facts)")

    from loccheck.models.loading import load_model
    from loccheck.studies.planted.implant import ablation_damage
    from loccheck.studies.planted.power import planted_task

    start = time.monotonic()
    loaded = load_model("smollm2-135m-instruct", device="cpu")
    task = planted_task(loaded.model, loaded.tokenizer, facts, args.seed)
    rows = ablation_damage(loaded.model, loaded.adapter, loaded.tokenizer, task,
                           [(site,) for site in loaded.adapter.sites(args.kind)])
    print(tabulate([[", ".join(r["location"]), f"{r['kl']:.3f}", f"{r['top1_kept']:.0%}"] for r in rows],
                   headers=["ablated (mean)", "next-token KL (nats)", "top token kept"], tablefmt="github"))
    out = REPO / "benchmarks" / "results" / f"ablation_damage_{args.kind}.json"
    write_json_atomic({"model": "smollm2-135m-instruct", "kind": args.kind, "seed": args.seed,
                       "prompts": len(task.behaviour), "seconds": round(time.monotonic() - start, 1),
                       "rows": rows}, out)
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
