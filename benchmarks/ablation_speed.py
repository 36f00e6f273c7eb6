"""What a necessity ablation costs next to an optimal edit, side by side in one run on the bundled
SmolLM2 with the shipped claim's setting (claims/iti_truthful.yaml: TruthfulQA, its split, its
edit settings):

- one ablation (mean, resample, zero) of a random 16-head location: the test split's
  preference_margin scored with the location removed (`ablations.ablate.ablated`), as a
  necessity job does; the train statistics that mean and resample read are computed once per
  testbed and timed apart;
- one optimal edit fit at a random 16-head location (minutes on a 2-core CPU: `--max-epochs`
  and `--max-questions` make it shorter), then its test scoring, as an editing job does.

Prints a table, ablations per second, edits per second and their ratio, the CPU (lscpu) and
torch's CPU capability, and writes benchmarks/results/ablation_speed[-tiny].json. `--tiny` runs
the same code on a tiny random Llama (2 layers x 4 heads; locations of 4 heads) in seconds.

    LOCCHECK_DATA_DIR=../shared/data python benchmarks/ablation_speed.py [--max-epochs 2] [--max-questions 100]
    python benchmarks/ablation_speed.py --tiny
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from loccheck.ablations import ABLATIONS
from loccheck.ablations.ablate import ablated, train_activations
from loccheck.cache import cache_dir
from loccheck.claim import load_claim
from loccheck.edits import EDIT_METHODS
from loccheck.run.testbed import prepare_testbed
from loccheck.stats.null import sample_null_locations

REPO = Path(__file__).resolve().parent.parent
METRIC = "preference_margin"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no lscpu)"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "unknown")


def tiny_claim(folder: Path) -> Path:
    """A claim on a tiny random Llama (every head live) and learnable pairs, with the shipped
    claim's tests."""
    from loccheck.locations import HeadLoc
    from loccheck.testing import claim_text, write_model_dir, write_pairs

    model = write_model_dir(folder / "model", "llama", [HeadLoc(l, h) for l in range(2) for h in range(4)])
    text = claim_text(model, write_pairs(folder / "pairs.jsonl"), ["L1H2", "L0H0", "L0H3", "L1H1"])
    path = folder / "tiny.yaml"
    path.write_text(text + "tests: [editing, necessity]\n")
    return path


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of SmolLM2 (seconds)")
    parser.add_argument("--max-epochs", type=int, help="cap of the edit fit (default: the claim's, 12)")
    parser.add_argument("--max-questions", type=int, help="TruthfulQA questions (default: the claim's, 400)")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each ablation (median)")
    parser.add_argument("--fits", type=int, default=1, help="edit fits timed, the first at the ablated location")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random locations")
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/ablation_speed[-tiny].json)")
    args = parser.parse_args()
    out = args.out or REPO / "benchmarks" / "results" / f"ablation_speed{'-tiny' if args.tiny else ''}.json"

    scratch = tempfile.TemporaryDirectory()
    path = tiny_claim(Path(scratch.name)) if args.tiny else REPO / "claims" / "iti_truthful.yaml"
    overrides = {"model.device": "cpu", **({"edits[0].max_epochs": args.max_epochs} if args.max_epochs else {}),
                 **({"behavior.max_questions": args.max_questions} if args.max_questions else {})}
    claim = load_claim(path).with_overrides(overrides)
    began = time.perf_counter()
    testbed = prepare_testbed(claim, Path(scratch.name) / "cache" if args.tiny else cache_dir())
    setup = {"testbed": time.perf_counter() - began}
    sites = testbed.sites("head")
    size = min(16, len(sites) // 2)
    locations = sample_null_locations(sites, size=size, n=max(1, args.fits), seed=args.seed)
    location = locations[0]
    setup["reference"] = timed(lambda: testbed.reference)                 # shared by every fit
    setup["train statistics"] = timed(lambda: train_activations(testbed, location))   # shared by every ablation
    unablated = testbed.score([METRIC])[METRIC]

    def ablation(name: str, seed: int) -> float:
        with ablated(testbed, location, name, seed):
            return testbed.score([METRIC])[METRIC]

    names = list(ABLATIONS)
    seconds = {name: [] for name in ["none (unablated scoring)", *names]}
    margins = {name: ablation(name, 0) for name in names}                 # warm-up, and the values
    for r in range(args.repeats):                                         # interleaved repeats
        seconds["none (unablated scoring)"].append(timed(lambda: testbed.score([METRIC])))
        for name in names:
            seconds[name].append(timed(lambda: ablation(name, r)))

    method = EDIT_METHODS["optimal"]
    settings = method.settings(claim.edits[0], verdict_metric=METRIC, site_kind="head")
    fits = []
    for loc in locations[:args.fits]:
        start = time.perf_counter()
        fitted = method.fit(testbed, settings, loc)
        fit_s = time.perf_counter() - start
        with fitted.edit.attached(testbed.model):
            score_s = timed(lambda: testbed.score([METRIC], on_batch=fitted.edit.on_batch))
        fits.append({"location": [str(s) for s in loc], "fit_s": fit_s, "score_s": score_s,
                     **{k: fitted.info[k] for k in ("epochs", "steps", "stopped", "converged")}})

    ablation_s = statistics.median(s for name in names for s in seconds[name])
    edit_s = statistics.median(f["fit_s"] + f["score_s"] for f in fits)
    rows = [[f"ablation: {name}" if name in names else name, statistics.median(t), 1 / statistics.median(t),
             f"{margins[name]:+.4f}" if name in margins else f"{unablated:+.4f}"] for name, t in seconds.items()]
    rows += [[f"optimal edit fit + scoring ({f['epochs']} epochs, {f['stopped']})", f["fit_s"] + f["score_s"],
              1 / (f["fit_s"] + f["score_s"]), ""] for f in fits]
    cpu, capability = cpu_model(), torch.backends.cpu.get_cpu_capability()
    model = "tiny random Llama" if args.tiny else claim.model.name
    print(f"{model}, {size}-head locations, {len(testbed.train)} train / {len(testbed.test)} test pairs, "
          f"max_epochs {settings.train.max_epochs}, {torch.get_num_threads()} threads; {cpu}, torch CPU capability "
          f"{capability}; ablations: median of {args.repeats}")
    print(tabulate(rows, headers=["job", "seconds", "per second", METRIC], floatfmt=".4g", tablefmt="github"))
    print("once per testbed: " + ", ".join(f"{k} {v:.3g} s" for k, v in setup.items()))
    print(f"ablations per second {1 / ablation_s:.4g}, edits per second {1 / edit_s:.4g}: "
          f"an ablation is {edit_s / ablation_s:.4g}x faster than an edit")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": model, "claim": str(path.relative_to(REPO)) if not args.tiny else "tiny", "cpu": cpu,
        "cpu_capability": capability, "threads": torch.get_num_threads(), "location_size": size,
        "settings": {"max_epochs": settings.train.max_epochs, "max_questions": claim.behavior.max_questions,
                     "train_pairs": len(testbed.train), "test_pairs": len(testbed.test), "repeats": args.repeats,
                     "seed": args.seed, "ablation_location": [str(s) for s in location]},
        "setup_s": setup, "ablation_s": seconds, "ablation_margins": margins, "unablated_margin": unablated,
        "fits": fits, "ablations_per_s": 1 / ablation_s, "edits_per_s": 1 / edit_s,
        "ratio": edit_s / ablation_s}, indent=2) + "\n")
    print(f"wrote {out}")
    scratch.cleanup()


if __name__ == "__main__":
    main()
