"""loccheck's optimal edit against what a user would otherwise run: TRL's DPOTrainer with
`loss_type="ipo"` and peft's rank-1 LoRA on every attention output projection (the whole-model
edit), side by side in one process on the bundled SmolLM2, the same TruthfulQA pairs, batch size,
learning rate and number of steps. Then a scaling table of loccheck alone: seconds per converged
edit against the location's size (1, 16, all heads) and the number of training pairs.

TRL is a benchmark-only dependency (`pip install -e ".[bench]"`), never imported by loccheck.

Measured per run: seconds per step, seconds for the whole fit (loccheck: until converged by its
rule; TRL: the same number of steps), peak RSS of the process during each fit (psutil, sampled
every 20 ms), the final training objective (loccheck's IPO objective on every training pair,
computed the same way for both), and the held-out preference margin gain on the test pairs
(loccheck's scorer for both). TRL's IPO divides each log-ratio by the completion's length
(its documented choice), so its loss is not loccheck's; the objective and margin columns are
computed by one scorer for both.

    LOCCHECK_DATA_DIR=../shared/data python benchmarks/vs_trl.py [--pairs 64] [--tag run1]

Then loccheck's levers side by side: seconds per epoch of the same edit with every pair as two
sequences, packed (each prompt once), and packed with the frozen prefix (what loccheck runs).

Prints tables and writes benchmarks/results/vs_trl[-TAG].json. Quote the ratios: absolute
times on a shared 2-core machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

import psutil
import torch
from tabulate import tabulate

from loccheck.data.behavior import load_behavior
from loccheck.edits.objectives import preference_logratio, preference_loss
from loccheck.edits.optimal import HeadEdit, initial_read_vectors
from loccheck.edits.training import TrainConfig, train_edit
from loccheck.locations import HeadLoc
from loccheck.models.loading import load_model
from loccheck.data.prompts import QA_TEMPLATE, tokenize_pairs
from loccheck.models.scoring import all_pair_logprobs

SIXTEEN = [HeadLoc(l, h) for l, h in [(1, 8), (6, 4), (9, 5), (10, 0), (12, 1), (12, 6), (13, 3),
                                      (14, 2), (15, 3), (15, 5), (16, 1), (16, 2), (19, 0), (22, 2),
                                      (22, 6), (23, 1)]]


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled)."""

    def __enter__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.peak = self.proc.memory_info().rss

        def sample():
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, self.proc.memory_info().rss)
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.gb = self.peak / 2**30


def margin(model, pairs, pad_id) -> float:
    lp = all_pair_logprobs(model, pairs, pad_id)
    return float((lp[:, 0] - lp[:, 1]).mean())


def objective(model, pairs, reference, pad_id, tau) -> float:
    h = preference_logratio(all_pair_logprobs(model, pairs, pad_id), reference)
    return float(preference_loss("ipo", h, tau=tau, beta=0.1))


def run_loccheck(lm, train, test, reference, base_margin, location, cfg, **levers) -> dict:
    edit = HeadEdit(lm.adapter, location, initial_read_vectors(lm.adapter, cfg.seed, 0.01))
    with PeakRSS() as mem, edit.attached(lm.model):
        start = time.perf_counter()
        fit = train_edit(lm.model, edit, train, reference, cfg, lm.pad_id, **levers)
        seconds = time.perf_counter() - start
        gain = margin(lm.model, test, lm.pad_id) - base_margin
    steps = len(fit.loss_curve)
    return {"steps": steps, "epochs": fit.epochs, "seconds": seconds, "s_per_step": seconds / steps,
            "converged": fit.converged, "stopped": fit.stopped, "peak_rss_gb": mem.gb,
            "final_objective": fit.final_objective, "heldout_margin_gain": gain}


def run_trl(lm, data, train, test, reference, base_margin, steps, cfg) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    rows = {"prompt": [QA_TEMPLATE.format(question=p.prompt) for p in data],
            "chosen": [" " + p.chosen for p in data], "rejected": [" " + p.rejected for p in data]}
    args = DPOConfig(output_dir=tempfile.mkdtemp(prefix="trl-"), loss_type=["ipo"], beta=cfg.tau,
                     per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                     lr_scheduler_type="constant", max_steps=steps, use_cpu=True, report_to="none",
                     save_strategy="no", logging_steps=steps, seed=cfg.seed, disable_tqdm=True)
    peft = LoraConfig(r=1, lora_alpha=1, lora_dropout=0.0, target_modules=["o_proj"], bias="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(model=lm.model, args=args, train_dataset=Dataset.from_dict(rows),
                             processing_class=lm.tokenizer, peft_config=peft)
        with PeakRSS() as mem:
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
    edited = trainer.model.get_base_model()        # the LoRA layers stay injected in it
    edited.eval()
    with torch.no_grad():
        result = {"steps": steps, "seconds": seconds, "s_per_step": seconds / steps,
                  "peak_rss_gb": mem.gb,
                  "final_objective": objective(edited, train, reference, lm.pad_id, cfg.tau),
                  "heldout_margin_gain": margin(edited, test, lm.pad_id) - base_margin}
    trainer.model.unload()                          # the plain model back, for what follows
    return result


LEVERS = {"plain (two sequences per pair)": {"packed": False, "freeze_prefix": False},
          "packed pairs": {"packed": True, "freeze_prefix": False},
          "packed pairs + frozen prefix (loccheck)": {"packed": True, "freeze_prefix": True}}


def measure_levers(lm, train, test, reference, base_margin, lr_all, epochs=2, repeats=2) -> list[dict]:
    """Seconds per epoch (training steps plus the whole-set objective) of each way of computing
    the same edit, for 1 / 16 / all heads, interleaved and repeated (the fastest repeat kept);
    the fitted objective must agree across the ways (they compute the same numbers)."""
    rows = []
    for label, location, lr in (("1 head (L16H2)", [HeadLoc(16, 2)], 4e-2), ("16 heads", SIXTEEN, 1e-2),
                                ("all 270 heads", None, lr_all)):
        cfg = TrainConfig(batch_size=4, learning_rate=lr, max_epochs=epochs, convergence_tol=1e-9)
        runs = {name: [] for name in LEVERS}
        for _ in range(repeats):
            for name, levers in LEVERS.items():
                runs[name].append(run_loccheck(lm, train, test, reference, base_margin, location, cfg, **levers))
        base = min(r["seconds"] for r in runs[next(iter(LEVERS))]) / epochs
        for name, r in runs.items():
            best = min(r, key=lambda x: x["seconds"])
            rows.append({"location": label, "way": name, "s_per_epoch": best["seconds"] / epochs,
                         "speedup": base / (best["seconds"] / epochs), "final_objective": best["final_objective"],
                         "peak_rss_gb": best["peak_rss_gb"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=64, help="training pairs (one per question)")
    ap.add_argument("--test-pairs", type=int, default=64)
    ap.add_argument("--learning-rate", type=float, default=2.5e-3, help="whole-model edits")
    ap.add_argument("--max-epochs", type=int, default=10)
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--no-levers", action="store_true")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model("smollm2-135m-instruct", device="cpu")
    n = args.pairs + args.test_pairs
    data = load_behavior(dataset="truthfulqa", path=None, base_dir=None,
                         split=(args.pairs / n, 0.0, args.test_pairs / n), split_seed=0,
                         max_questions=n, max_pairs_per_question=1)
    train = tokenize_pairs(lm.tokenizer, data.train, "qa")
    test = tokenize_pairs(lm.tokenizer, data.test, "qa")
    reference = all_pair_logprobs(lm.model, train, lm.pad_id)
    base_margin = margin(lm.model, test, lm.pad_id)
    cfg = TrainConfig(batch_size=4, learning_rate=args.learning_rate, max_epochs=args.max_epochs,
                      convergence_tol=0.02, tau=0.1)
    ours = run_loccheck(lm, train, test, reference, base_margin, None, cfg)
    theirs = run_trl(lm, data.train, train, test, reference, base_margin, ours["steps"], cfg)
    rows = [[name, r["steps"], f"{r['s_per_step']:.3f}", f"{r['seconds']:.1f}",
             f"{r['peak_rss_gb']:.2f}", f"{r['final_objective']:.3f}", f"{r['heldout_margin_gain']:+.3f}"]
            for name, r in (("loccheck (all heads, until converged)", ours),
                            ("TRL DPOTrainer + peft LoRA r=1 (same steps)", theirs))]
    print(f"\nSmolLM2-135M-Instruct, {len(train)} train / {len(test)} test pairs, batch 4, "
          f"lr {args.learning_rate:g}, IPO tau 0.1; loccheck {ours['epochs']} epochs, "
          f"{'converged' if ours['converged'] else 'NOT converged'} ({ours['stopped']})")
    print(tabulate(rows, headers=["", "steps", "s/step", "s/fit", "peak RSS GB",
                                  "train objective", "held-out margin gain"], tablefmt="github"))
    ratio = {"per_step": theirs["s_per_step"] / ours["s_per_step"],
             "per_fit": theirs["seconds"] / ours["seconds"]}
    print(f"TRL / loccheck: {ratio['per_step']:.2f}x per step, {ratio['per_fit']:.2f}x per fit")
    scaling = []
    if not args.no_scaling:
        for label, location, n_pairs, lr in (("1 head (L16H2)", [HeadLoc(16, 2)], args.pairs, 1e-2 * 4),
                                             ("16 heads", SIXTEEN, args.pairs, 1e-2),
                                             ("all 270 heads", None, args.pairs, args.learning_rate),
                                             ("16 heads", SIXTEEN, args.pairs // 2, 1e-2),
                                             ("16 heads", SIXTEEN, args.pairs * 2, 1e-2)):
            sub_n = n_pairs + args.test_pairs
            sub = load_behavior(dataset="truthfulqa", path=None, base_dir=None,
                                split=(n_pairs / sub_n, 0.0, args.test_pairs / sub_n), split_seed=0,
                                max_questions=sub_n, max_pairs_per_question=1)
            tr = tokenize_pairs(lm.tokenizer, sub.train, "qa")
            te = tokenize_pairs(lm.tokenizer, sub.test, "qa")
            ref = all_pair_logprobs(lm.model, tr, lm.pad_id)
            r = run_loccheck(lm, tr, te, ref, margin(lm.model, te, lm.pad_id), location,
                             TrainConfig(batch_size=4, learning_rate=lr, max_epochs=args.max_epochs,
                                         convergence_tol=0.02))
            scaling.append({"location": label, "train_pairs": len(tr), "learning_rate": lr, **r})
        print("\nloccheck alone: time per converged edit")
        print(tabulate([[s["location"], s["train_pairs"], s["learning_rate"], s["epochs"], s["steps"],
                         f"{s['s_per_step']:.3f}", f"{s['seconds']:.1f}", s["stopped"],
                         f"{s['final_objective']:.3f}", f"{s['heldout_margin_gain']:+.3f}"] for s in scaling],
                       headers=["location", "train pairs", "lr", "epochs", "steps", "s/step", "s/edit",
                                "stopped", "train objective", "held-out gain"], tablefmt="github"))
    levers = []
    if not args.no_levers:
        levers = measure_levers(lm, train, test, reference, base_margin, args.learning_rate)
        print(f"\nloccheck's levers: seconds per epoch ({len(train)} pairs), the same edit computed three ways")
        print(tabulate([[r["location"], r["way"], f"{r['s_per_epoch']:.2f}", f"{r['speedup']:.2f}x",
                         f"{r['final_objective']:.4f}"] for r in levers],
                       headers=["location", "way", "s/epoch", "speed-up", "train objective after 2 epochs"],
                       tablefmt="github"))
    out = Path(__file__).parent / "results" / f"vs_trl{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"loccheck": ours, "trl": theirs, "ratio": ratio, "scaling": scaling,
                               "levers": levers,
                               "train_pairs": len(train), "test_pairs": len(test),
                               "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
