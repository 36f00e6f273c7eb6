"""Turn preference pairs into token ids: the prompt format is part of the claim and the report."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from loccheck.errors import DataError

QA_TEMPLATE = "Q: {question} A:"   # METHOD.md's "Q: {question} A: {answer}"


@dataclass(frozen=True)
class TokenizedPair:
    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]


def resolve_format(tokenizer, prompt_format: str) -> str:
    """`auto` means the tokenizer's chat template when it has one, else `Q: ... A:`."""
    if prompt_format == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "qa"
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise DataError("'chat' needs a chat template, and the model's tokenizer has none "
                        "(use prompt_format: qa)", key="behavior.prompt_format")
    return prompt_format


def format_prompt(tokenizer, question: str, prompt_format: str, system_prompt: str | None) -> str:
    if prompt_format == "qa":
        return QA_TEMPLATE.format(question=question)
    messages = [{"role": "user", "content": question}]
    if system_prompt is not None:  # None keeps the template's own default system prompt
        messages.insert(0, {"role": "system", "content": system_prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize_pairs(tokenizer, pairs: Sequence, prompt_format: str,
                   system_prompt: str | None = None) -> list[TokenizedPair]:
    """Prompt and answers are tokenized apart, so both answers of a pair share the prompt ids."""
    out = []
    for pair in pairs:
        text = format_prompt(tokenizer, pair.prompt, prompt_format, system_prompt)
        # A chat template already writes its special tokens; plain text gets the tokenizer's BOS.
        prompt = tokenizer(text, add_special_tokens=prompt_format == "qa").input_ids
        lead = " " if prompt_format == "qa" else ""
        chosen = tokenizer(lead + pair.chosen, add_special_tokens=False).input_ids
        rejected = tokenizer(lead + pair.rejected, add_special_tokens=False).input_ids
        if not prompt or not chosen or not rejected:
            continue  # an answer that tokenizes to nothing has no log-probability to compare
        out.append(TokenizedPair(tuple(prompt), tuple(chosen), tuple(rejected)))
    return out
