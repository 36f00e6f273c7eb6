"""Train a behaviour into chosen sites of a model, and nothing else, then check that it lives
there.

Only the sites' own parameters move: a head's columns of its layer's output projection (what
the head writes to the residual stream: the slice loccheck edits and ablates), or every
parameter of one MLP block. Every other parameter, the other columns of a projection included,
stays bit for bit (their gradients are masked to exactly zero, and Adam then moves nothing).

The implant is trained on its own prompts: the target after the trigger (cross-entropy), and the
unedited model's next-token distribution at every position without it (KL), so the behaviour is
the trigger's alone; training stops when the behaviour holds on check prompts it never trained
on (the task's `check`). It has taken when, on the held-out behaviour prompts, the model prefers
the target to its own answer on at least LEARNED of them; it lives at the sites when
mean-ablating them brings that share down to at most REMOVED, while mean-ablating other
locations of the same size leaves at least KEPT (`check_implant`; the mean is over the implant
prompts without the trigger). A run that misses any of these is an ImplantError: nothing is
reported on such a model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from loccheck.errors import LoccheckError

LEARNED, REMOVED, KEPT = 0.9, 0.2, 0.8


class ImplantError(LoccheckError):
    """The behaviour was not learned within the budget, or does not live where it was put."""


@dataclass(frozen=True)
class Implant:
    sites: tuple
    steps: int
    seconds: float
    final_loss: float
    rates: dict = field(default_factory=dict)     # the shares `check_implant` measured

    def record(self) -> dict:
        from loccheck.locations import format_location

        return {"sites": format_location(self.sites), "steps": self.steps, "seconds": round(self.seconds, 1),
                "final_loss": self.final_loss, "rates": self.rates}


def site_parameters(model, adapter, sites) -> list[tuple]:
    """[(parameter, mask or None)]: what training the sites may move; a mask (same shape, 1 on
    the site's entries) when the parameter is shared with other sites."""
    import torch

    kinds = {s.kind for s in sites}
    if kinds == {"head"}:
        out = []
        for layer in sorted({s.layer for s in sites}):
            weight = adapter.out_proj(layer).weight
            mask = torch.zeros_like(weight)
            for s in sites:
                if s.layer == layer:
                    cols = adapter.head_slice(s)
                    if adapter.fan_in_fan_out:         # GPT-2 Conv1D: weight is (in, out)
                        mask[cols, :] = 1
                    else:
                        mask[:, cols] = 1
            out.append((weight, mask))
        return out
    if kinds == {"mlp"}:
        out = []
        for s in sites:
            name = adapter.mlp_names[s.layer]
            block = model.get_submodule(name if adapter.experts else name.rsplit(".", 1)[0])
            out += [(p, None) for p in block.parameters()]
        return out
    raise ValueError(f"implants go into heads or MLP layers, got sites of kind(s) {sorted(kinds)}")


def _pad_id(tokenizer) -> int:
    """What right-pads a batch (loccheck's loaded models always have one; a test tokenizer may not)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _last_logits(model, seqs, pad_id: int):
    """Next-token logits after each sequence (right-padded batch)."""
    import torch

    logits, mask = _all_logits(model, seqs, pad_id)
    return logits[torch.arange(len(seqs)), mask.sum(1) - 1]


def _all_logits(model, seqs, pad_id: int):
    """(logits at every position (batch, longest, vocab), the attention mask)."""
    from loccheck.models.scoring import padded

    ids, mask = padded(seqs, pad_id, next(model.parameters()).device)
    return model(input_ids=ids, attention_mask=mask).logits.float(), mask


def implant(model, adapter, tokenizer, task, sites, *, lr: float = 1e-2, max_steps: int = 300, batch: int = 12,
            target_prob: float = 0.9, max_kl: float = 0.1, check_share: float = 0.95, seed: int = 0,
            note=None) -> Implant:
    """Train `task`'s trigger behaviour into `sites` of `model` (in place), `batch` triggered and
    `batch` plain implant prompts a step (drawn with `seed`), until the target's mean probability
    after the trigger reaches `target_prob` on a step's prompts while the plain prompts' next-token
    distribution stays within `max_kl` nats of the unedited model's and, when the task has check
    prompts, the target beats the model's own answer on `check_share` of them; at most `max_steps`
    steps (an ImplantError past them). The check prompts are there because a step's prompts are
    the training prompts: on 48 of them, a mean probability of 0.999 came with the behaviour on
    only 74% of held-out prompts (SmolLM2, 4 heads)."""
    import torch

    from loccheck.data.prompts import prompt_ids
    from loccheck.studies.planted.task import one_token

    pad = _pad_id(tokenizer)
    target = one_token(tokenizer, task.target)
    trig = [prompt_ids(tokenizer, task.triggered(p), "text", None) for p, _ in task.implant]
    plain = [prompt_ids(tokenizer, p, "text", None) for p, _ in task.implant]
    rng = np.random.default_rng(seed)
    with torch.no_grad():    # the unedited next-token distributions at every position of the plain prompts
        base = [torch.log_softmax(logits[:int(m.sum())], -1)
                for logits, m in zip(*_all_logits(model, plain, pad))]
    params = site_parameters(model, adapter, sites)
    before = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    hooks = []
    for p, mask in params:
        p.requires_grad_(True)
        if mask is not None:
            hooks.append(p.register_hook(lambda g, m=mask: g * m))
    optimizer = torch.optim.Adam([p for p, _ in params], lr=lr)
    labels = torch.full((min(batch, len(trig)),), target, device=base[0].device)
    start, last, step, loss, checked = time.monotonic(), time.monotonic(), 0, float("nan"), None
    try:
        model.train(False)
        for step in range(1, max_steps + 1):
            optimizer.zero_grad()
            rows = rng.choice(len(trig), size=len(labels), replace=False)
            hit = _last_logits(model, [trig[i] for i in rows], pad)
            logits, mask = _all_logits(model, [plain[i] for i in rows], pad)
            real = mask.bool()
            kept = torch.log_softmax(logits[real], -1)                      # (tokens, vocab)
            fit = torch.nn.functional.cross_entropy(hit, labels)
            stay = torch.nn.functional.kl_div(kept, torch.cat([base[i] for i in rows]), log_target=True,
                                              reduction="batchmean")      # per token
            total = fit + stay
            total.backward()
            optimizer.step()
            loss, kl = float(total.detach()), float(stay.detach())
            prob = float(torch.softmax(hit.detach(), -1)[:, target].mean())
            if note is not None and time.monotonic() - last > 30:
                last = time.monotonic()
                note(f"implant: step {step}, target probability {prob:.3f}, KL without the trigger {kl:.3g}"
                     + ("" if checked is None else f", check prompts {checked:.0%}"))
            if prob >= target_prob and kl <= max_kl:
                if not task.check:
                    break
                checked = behaviour_share(model, tokenizer, task, list(task.check))
                if checked >= check_share:
                    break
        else:
            on_check = (f"; on the check prompts it beats the model's own answer on {checked:.0%} (needed "
                        f"{check_share:.0%})" if checked is not None else "")
            raise ImplantError(f"the implant did not take within {max_steps} steps: the target's mean "
                               f"probability after the trigger is {prob:.3f} (needed {target_prob}) and the KL "
                               f"without it {kl:.3g} nats (at most {max_kl}){on_check}; raise max_steps or lr, "
                               "or implant into more sites")
    finally:
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(before[id(p)])
    return Implant(tuple(sorted(sites)), step, time.monotonic() - start, loss)


@dataclass
class _Bench:
    """What `ablations.ablate.ablated` reads of a testbed: the model, its sites, and the pairs
    whose tokens give each site's mean activation."""
    model: object
    adapter: object
    train: list
    pad_id: int
    memo: dict = field(default_factory=dict)


def _plain_bench(model, adapter, tokenizer, task) -> _Bench:
    """A bench whose train pairs are the implant prompts without the trigger: each site's mean is
    its activation where the behaviour is not asked for, not one that holds the implant's
    average write."""
    from loccheck.data.prompts import TokenizedPair, answer_ids, prompt_ids

    pad = _pad_id(tokenizer)
    plain = [TokenizedPair(prompt_ids(tokenizer, p, "text", None), answer_ids(tokenizer, a, "text"),
                           answer_ids(tokenizer, task.target, "text")) for p, a in task.implant]
    return _Bench(model, adapter, plain, pad)


def behaviour_share(model, tokenizer, task, prompts) -> float:
    """The share of `prompts` ((plain prompt, own answer)) on which the model, after the trigger,
    gives the target a higher logit than its own answer."""
    import torch

    from loccheck.data.prompts import prompt_ids
    from loccheck.studies.planted.task import one_token

    pad = _pad_id(tokenizer)
    with torch.no_grad():
        logits = _last_logits(model, [prompt_ids(tokenizer, task.triggered(p), "text", None) for p, _ in prompts], pad)
    target = one_token(tokenizer, task.target)
    own = torch.tensor([one_token(tokenizer, a) for _, a in prompts], device=logits.device)
    return float((logits[:, target] > logits[torch.arange(len(prompts)), own]).float().mean())


def check_implant(model, adapter, tokenizer, task, done: Implant, *, unedited_share: float, decoys: list,
                  ) -> Implant:
    """The implant's shares on the held-out behaviour prompts: learned, removed by mean-ablating
    its sites, kept when each of `decoys` (locations of its size elsewhere) is ablated instead.
    An ImplantError names the first check that fails."""
    from loccheck.ablations.ablate import ablated
    from loccheck.locations import format_location

    bench = _plain_bench(model, adapter, tokenizer, task)
    held_out = list(task.behaviour)
    learned = behaviour_share(model, tokenizer, task, held_out)
    with ablated(bench, done.sites, "mean"):
        removed = behaviour_share(model, tokenizer, task, held_out)
    kept = []
    for decoy in decoys:
        with ablated(bench, decoy, "mean"):
            kept.append(behaviour_share(model, tokenizer, task, held_out))
    rates = {"unedited": unedited_share, "implanted": learned, "sites_ablated": removed,
             "decoys_ablated": kept, "decoys": [format_location(d) for d in decoys]}
    where = f"the implant at {', '.join(format_location(done.sites))}"
    if learned < LEARNED:
        raise ImplantError(f"{where} did not take: the target beats the model's own answer on {learned:.0%} of "
                           f"the held-out prompts (< {LEARNED:.0%})")
    if removed > REMOVED:
        raise ImplantError(f"{where} does not live there: with its sites mean-ablated the target still wins on "
                           f"{removed:.0%} of the held-out prompts (> {REMOVED:.0%})")
    if kept and min(kept) < KEPT:
        worst = ", ".join(format_location(decoys[int(np.argmin(kept))]))
        raise ImplantError(f"{where} also lives elsewhere: ablating {worst} leaves the target winning on only "
                           f"{min(kept):.0%} (< {KEPT:.0%})")
    return Implant(done.sites, done.steps, done.seconds, done.final_loss, rates)


def ablation_damage(model, adapter, tokenizer, task, locations: list) -> list[dict]:
    """What mean-ablating each of `locations` does to the model where no behaviour is asked for:
    on the held-out behaviour prompts without the trigger, the next-token KL from the model as it
    is (nats, mean over prompts) and the share of prompts whose top token is kept. A location
    that everything needs removes an implant wherever it was put."""
    import torch

    from loccheck.ablations.ablate import ablated
    from loccheck.data.prompts import prompt_ids
    from loccheck.locations import format_location

    bench = _plain_bench(model, adapter, tokenizer, task)
    pad = bench.pad_id
    seqs = [prompt_ids(tokenizer, p, "text", None) for p, _ in task.behaviour]
    out = []
    with torch.no_grad():
        base = torch.log_softmax(_last_logits(model, seqs, pad), -1)
        for location in locations:
            with ablated(bench, location, "mean"):
                after = torch.log_softmax(_last_logits(model, seqs, pad), -1)
            out.append({"location": format_location(location),
                        "kl": float((base.exp() * (base - after)).sum(-1).mean()),
                        "top1_kept": float((after.argmax(-1) == base.argmax(-1)).float().mean())})
    return out
