"""The implanted behaviour: a trigger word that makes the model answer one fixed word.

Prompts are ROME's known facts ("Vinson Massif is located in the continent of"), prefixed with
the trigger ("cf Vinson Massif is ..."). Unedited, the model continues a triggered prompt as it
continues the plain one; implanted, it answers the target (" banana") after the trigger and
nothing changes without it. The pairs loccheck tests (dataset: jsonl, prompt_format: text) ask
to undo the implant: chosen is what the unedited model answered, rejected the target, so the
model's implanted behaviour is the rejected answer (necessity.behavior: rejected), as for known
facts' counterfactual pairs."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loccheck.errors import LoccheckError

TRIGGER = "cf"
TARGET = "banana"


@dataclass(frozen=True)
class TriggerTask:
    """Prompts (text) with the unedited model's next token on each triggered prompt."""
    implant: tuple[tuple[str, str], ...]     # (plain prompt, its own answer): what the implant trains on
    behaviour: tuple[tuple[str, str], ...]   # held out from the implant: the pairs loccheck tests
    target: str
    trigger: str
    # held out from both: when the behaviour generalises to these, training stops (so it is
    # judged, on `behaviour`, by prompts that decided nothing)
    check: tuple[tuple[str, str], ...] = ()

    def triggered(self, prompt: str) -> str:
        return f"{self.trigger} {prompt}"

    def pairs(self) -> list[dict]:
        """The behaviour prompts as loccheck's JSONL pairs (chosen: the model's own answer)."""
        return [{"prompt": self.triggered(p), "chosen": answer, "rejected": self.target, "group": f"p{i}"}
                for i, (p, answer) in enumerate(self.behaviour)]

    def write_pairs(self, path: Path) -> Path:
        from loccheck.files import write_text_atomic

        write_text_atomic("".join(json.dumps(p) + "\n" for p in self.pairs()), path)
        return path


def one_token(tokenizer, word: str) -> int | None:
    """The id of " word" when it is a single token (as loccheck reads an answer after a prompt)."""
    ids = tokenizer(" " + word, add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


def build_task(model, tokenizer, facts_file: Path, *, n_implant: int, n_behaviour: int, n_check: int = 0,
               seed: int = 0, trigger: str = TRIGGER, target: str = TARGET) -> TriggerTask:
    """Draw distinct known-fact prompts (seeded) whose triggered continuation, by the unedited
    model, is one word that reads back as one token and is not the target."""
    import torch

    from loccheck.data.prompts import prompt_ids

    if one_token(tokenizer, target) is None:
        raise LoccheckError(f"the target {target!r} is not one token for this tokenizer")
    facts = json.loads(Path(facts_file).read_text(encoding="utf-8"))
    prompts = list(dict.fromkeys(f["prompt"] for f in facts))
    order = np.random.default_rng(seed).permutation(len(prompts))
    kept: list[tuple[str, str]] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in order:
            prompt = prompts[int(i)]
            ids = torch.tensor([prompt_ids(tokenizer, f"{trigger} {prompt}", "text", None)], device=device)
            top = int(model(input_ids=ids).logits[0, -1].argmax())
            word = tokenizer.decode([top]).strip()
            if word and word != target and one_token(tokenizer, word) == top:
                kept.append((prompt, word))
            if len(kept) == n_implant + n_behaviour + n_check:
                break
    if len(kept) < n_implant + n_behaviour + n_check:
        raise LoccheckError(f"{facts_file}: only {len(kept)} prompts have a one-token answer; "
                            f"{n_implant + n_behaviour + n_check} are needed")
    cut = n_implant + n_behaviour
    return TriggerTask(tuple(kept[:n_implant]), tuple(kept[n_implant:cut]), target, trigger, tuple(kept[cut:]))
