"""Time one training step of an edit on the bundled SmolLM2, side by side in one run:

- answer-only scoring (the vocabulary projection only where an answer token is predicted, as
  loccheck does) against the naive path (full logits, then pick the answer positions);
- a 16-head edit, a single-head edit, and the whole-model peft LoRA (the ceiling).

Prints a table and writes benchmarks/results/edit_speed.json. Ratios are what to quote:
absolute times on a shared 2-core machine are noisy.

    LOCCHECK_DATA_DIR=../shared/data python benchmarks/edit_speed.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from tabulate import tabulate

from loccheck.data.behavior import load_behavior
from loccheck.edits.optimal import FullLoraEdit, HeadEdit, initial_read_vectors
from loccheck.locations import HeadLoc
from loccheck.models import get_adapter
from loccheck.models.loading import load_model
from loccheck.edits.objectives import ipo_loss, preference_logratio
from loccheck.data.prompts import tokenize_pairs
from loccheck.models.scoring import all_pair_logprobs, pair_logprobs


def naive_pair_logprobs(model, pairs, pad_id):
    """The baseline: full (batch, pos, vocab) logits, then the answer positions."""
    prompts = [p.prompt for p in pairs] * 2
    answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    seqs = [list(p) + list(a) for p, a in zip(prompts, answers)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    out = []
    for i, (p, a) in enumerate(zip(prompts, answers)):
        pos = torch.arange(len(p) - 1, len(p) + len(a) - 1)
        out.append(logp[i, pos, torch.tensor(a)].sum())
    lp = torch.stack(out)
    return torch.stack([lp[: len(pairs)], lp[len(pairs):]], dim=1)


def step_seconds(model, edit, batch, reference, score) -> float:
    with edit.attached(model):
        opt = torch.optim.AdamW(edit.trainable(), lr=1e-2)
        start = time.perf_counter()
        h = preference_logratio(score(model, batch, 2).double(), reference)
        loss = ipo_loss(h, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "edit_speed.json")
    args = parser.parse_args()

    loaded = load_model("smollm2-135m-instruct", device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    adapter = get_adapter(model)
    data = load_behavior(dataset="truthfulqa", path=None, base_dir=None, max_questions=20,
                         max_pairs_per_question=1, split=(0.5, 0.0, 0.5))
    batch = tokenize_pairs(tok, data.train, "qa")[:4]                 # one step: 4 pairs
    reference = all_pair_logprobs(model, batch, tok.pad_token_id)
    a_init = initial_read_vectors(adapter, 0, 0.01)
    sixteen = [HeadLoc(8 + i, i % 9) for i in range(16)]
    cases = {
        "16 heads, answer-only scoring": (lambda: HeadEdit(adapter, sixteen, a_init), pair_logprobs),
        "16 heads, full-logits scoring": (lambda: HeadEdit(adapter, sixteen, a_init), naive_pair_logprobs),
        "1 head (L15H4)": (lambda: HeadEdit(adapter, [HeadLoc(15, 4)], a_init), pair_logprobs),
        "whole model (peft LoRA)": (lambda: FullLoraEdit(adapter, a_init), pair_logprobs),
    }
    times = {name: [] for name in cases}
    for name, (make, score) in cases.items():                         # warm-up
        step_seconds(model, make(), batch, reference, score)
    for _ in range(args.repeats):                                     # interleaved repeats
        for name, (make, score) in cases.items():
            times[name].append(step_seconds(model, make(), batch, reference, score))
    base = statistics.median(times["16 heads, answer-only scoring"])
    rows = [[name, statistics.median(t), statistics.median(t) / base] for name, t in times.items()]
    print(f"one training step, 4 pairs (8 sequences, up to {max(len(p.prompt) + max(len(p.chosen), len(p.rejected)) for p in batch)} tokens), "
          f"SmolLM2-135M, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(tabulate(rows, headers=["case", "seconds", "ratio to 16 heads answer-only"],
                   floatfmt=".3f", tablefmt="github"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"repeats": args.repeats, "threads": torch.get_num_threads(),
                                    "cpu_count": os.cpu_count(), "seconds": times,
                                    "median_ratio": {r[0]: r[2] for r in rows}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
