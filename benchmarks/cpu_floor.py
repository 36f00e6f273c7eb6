"""Where a training step's time goes on this machine, and what is left for a CPU to buy.

Issue 9 asks for edits several times faster than they are. This benchmark measures, on the
bundled SmolLM2 and TruthfulQA pairs, the three things that decide whether that can come from
arithmetic on a CPU, for one step of an edit as loccheck trains it (packed pairs, frozen prefix):

1. The matrix products' share of the step and their throughput (torch.profiler's FLOP count of
   every aten::mm / addmm / bmm over their time), against the throughput of one large square
   float32 GEMM on the same threads: how close the step is to the machine's arithmetic floor.
2. Seconds per training pair against the batch size (4, 8, 16 pairs): a batch of 16 pairs costs
   what four edits trained in one forward pass of 4 pairs each would cost at the least, so this
   bounds what "several edits per forward" buys here.
3. float32 matrix products done in bfloat16 by oneDNN (`torch.backends.mkldnn.matmul.
   fp32_precision = "bf16"`, AMX on CPUs that have it; weights and activations stay float32):
   the speed of a step and of a no-grad pass, and how far the training pairs' log-probabilities
   and margins move, unedited and with the edit the timing steps trained.

    LOCCHECK_DATA_DIR=../shared/data python benchmarks/cpu_floor.py [--tag run1]

Prints tables and writes benchmarks/results/cpu_floor[-TAG].json. Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
from tabulate import tabulate

from loccheck.data.behavior import load_behavior
from loccheck.edits.objectives import preference_logratio, preference_loss
from loccheck.edits.optimal import HeadEdit, initial_read_vectors
from loccheck.locations import parse_location
from loccheck.models import get_adapter
from loccheck.models.loading import load_model
from loccheck.models.prefix import lowest_edited_block, pair_prefix
from loccheck.data.prompts import tokenize_pairs
from loccheck.models.scoring import all_pair_logprobs, pair_logprobs

# The shipped claim's heads (claims/iti_truthful.yaml): the lowest edited block is 14.
CLAIM = parse_location("L14H0 L14H2 L16H4 L16H7 L16H8 L17H6 L19H0 L19H2 L19H5 L19H6 L21H3 "
                       "L26H4 L26H7 L26H8 L27H6 L27H7".split())
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"}


def gemm_throughput(n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an n x n float32 matrix product on this process's threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


class Stepper:
    """Training steps of one edit on fixed batches, as train_edit takes them."""

    def __init__(self, model, adapter, pairs, reference, pad_id, location):
        self.model, self.pairs, self.reference, self.pad_id = model, pairs, reference, pad_id
        self.edit = HeadEdit(adapter, location, initial_read_vectors(adapter, 0, 0.01))
        self.optimizer = torch.optim.AdamW(self.edit.trainable(), lr=1e-2)
        self.prefix = None

    def __enter__(self):
        self._attached = self.edit.attached(self.model)
        self._attached.__enter__()
        self.prefix = pair_prefix(self.model, self.edit.adapter, lowest_edited_block(self.edit),
                                  self.pairs, self.pad_id)
        return self

    def __exit__(self, *exc):
        self._attached.__exit__(*exc)

    def step(self, idx):
        policy = pair_logprobs(self.model, [self.pairs[i] for i in idx], self.pad_id, prefix=self.prefix)
        h = preference_logratio(policy.double(), self.reference[idx])
        loss = preference_loss("ipo", h, tau=0.1, beta=0.1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def seconds_per_pair(self, batch_size: int, repeats: int = 2) -> float:
        """Fastest of `repeats` passes over every pair in batches of `batch_size`."""
        n = len(self.pairs) - len(self.pairs) % batch_size
        self.step(list(range(batch_size)))
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for first in range(0, n, batch_size):
                self.step(list(range(first, first + batch_size)))
            best = min(best, (time.perf_counter() - start) / n)
        return best


def profile_step(stepper: Stepper, batch_size: int, steps: int = 4) -> dict:
    from torch.profiler import ProfilerActivity, profile

    stepper.step(list(range(batch_size)))
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for s in range(steps):
            stepper.step(list(range(s * batch_size, (s + 1) * batch_size)))
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = [e for e in events if e.key in MATMULS]
    mm_time = sum(e.self_cpu_time_total for e in mm)
    mm_flops = sum(e.flops for e in mm)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]
    return {"matmul_share": mm_time / total, "matmul_gflops": mm_flops / (mm_time / 1e6) / 1e9,
            "top_ops": [(e.key, e.self_cpu_time_total / total) for e in top]}


def bf16_errors(model, pairs, pad_id) -> tuple[dict, float]:
    """How far the pairs' log-probabilities and margins move with oneDNN's bfloat16 products
    for float32 tensors, and the no-grad pass's speedup."""
    def timed(mode):
        torch.backends.mkldnn.matmul.fp32_precision = mode
        all_pair_logprobs(model, pairs[:8], pad_id)
        start = time.perf_counter()
        return all_pair_logprobs(model, pairs, pad_id), time.perf_counter() - start

    try:
        (exact, slow), (fast, quick) = timed("none"), timed("bf16")
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = "none"
    margin = lambda lp: lp[:, 0] - lp[:, 1]
    return ({"logprob_error_max": float((fast - exact).abs().max()),
             "logprob_error_mean": float((fast - exact).abs().mean()),
             "margin_error_max": float((margin(fast) - margin(exact)).abs().max()),
             "mean_margin_shift": float((margin(fast) - margin(exact)).mean())}, slow / quick)


def bf16_step_speedup(stepper: Stepper, batch_size: int) -> float:
    knob = torch.backends.mkldnn.matmul
    try:
        times = {}
        for mode in ("none", "bf16"):
            knob.fp32_precision = mode
            times[mode] = stepper.seconds_per_pair(batch_size, repeats=1)
    finally:
        knob.fp32_precision = "none"
    return times["none"] / times["bf16"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    lm = load_model("smollm2-135m-instruct", device="cpu")
    model, pad_id = lm.model, lm.pad_id
    data = load_behavior(dataset="truthfulqa", path=None, base_dir=None, max_questions=2 * args.pairs,
                         max_pairs_per_question=1, split=(0.5, 0.0, 0.5))
    pairs = tokenize_pairs(lm.tokenizer, data.train, "qa")[:args.pairs]
    reference = all_pair_logprobs(model, pairs, pad_id)
    adapter = get_adapter(model)
    peak = gemm_throughput()
    errors, no_grad = bf16_errors(model, pairs, pad_id)
    out = {"threads": torch.get_num_threads(), "pairs": len(pairs), "gemm_gflops": peak,
           "bf16_unedited": {**errors, "no_grad_speedup": no_grad}, "locations": {}}
    for name, location in (("claim (16 heads from L14)", CLAIM), ("whole model (270 heads)", None)):
        with Stepper(model, adapter, pairs, reference, pad_id, location) as stepper:
            prof = profile_step(stepper, 4)
            per_pair = {b: stepper.seconds_per_pair(b) for b in (4, 8, 16)}
            bf16 = {"step_speedup": bf16_step_speedup(stepper, 4), **bf16_errors(model, pairs, pad_id)[0]}
        out["locations"][name] = {"profile": prof, "s_per_pair": per_pair, "bf16_edited": bf16}
    e = out["bf16_unedited"]
    print(f"float32 GEMM 2048^3 on {out['threads']} threads: {peak:.0f} GFLOP/s")
    print(f"bfloat16 products, unedited model: no-grad pass {e['no_grad_speedup']:.2f}x, max |dlogp| "
          f"{e['logprob_error_max']:.3f} (mean {e['logprob_error_mean']:.3f}), max |dmargin| "
          f"{e['margin_error_max']:.3f}, mean dmargin {e['mean_margin_shift']:+.3f}\n")
    rows = []
    for name, r in out["locations"].items():
        p, s, b = r["profile"], r["s_per_pair"], r["bf16_edited"]
        rows.append([name, f"{p['matmul_share']:.0%}", f"{p['matmul_gflops']:.0f} ({p['matmul_gflops'] / peak:.0%})",
                     f"{s[4] * 1e3:.0f} / {s[8] * 1e3:.0f} / {s[16] * 1e3:.0f}", f"{s[4] / s[16]:.2f}x",
                     f"{b['step_speedup']:.2f}x",
                     f"{b['logprob_error_max']:.3f} / {b['margin_error_max']:.3f} / {b['mean_margin_shift']:+.3f}"])
    print(tabulate(rows, headers=["edit", "matmul share of a step", "matmul GFLOP/s (of GEMM)",
                                  "ms per pair at batch 4 / 8 / 16", "batch 16 vs 4",
                                  "bf16 products: step", "bf16, edited*: max |dlogp| / max |dmargin| / mean dmargin"]))
    print("(*) the edit after the timing steps above (at learning rate 1e-2)")
    for name, r in out["locations"].items():
        print(f"\n{name}, heaviest ops: " + ", ".join(f"{k} {v:.0%}" for k, v in r["profile"]["top_ops"]))
    path = Path(__file__).parent / "results" / f"cpu_floor{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
