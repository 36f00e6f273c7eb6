"""The testbed: what every fit of one claim shares. The loaded model and its adapter, the data
split by question and tokenized, the unedited model's reference log-probabilities, and the
identity of all of it (the part of every cache key that is not the edit or the location).
Prepared once per claim (and once per worker when fits run elsewhere)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from loccheck.cache import CacheRoot, cache_root as resolve_cache, content_key
from loccheck.errors import DataError, LoccheckError
from loccheck.numerics import TESTBED, numerics_identity, versions
from loccheck.run.inspect import ClaimInputs, Residual, inspect_claim, load_claim_data, model_context, side_texts, tokenized_splits


@dataclass
class Testbed:
    loaded: Any                        # models.loading.LoadedModel (model, tokenizer, adapter)
    data: Any                          # data.BehaviorData
    train: Sequence                    # tokenized pairs (prompts.TokenizedPair)
    validation: Sequence
    test: Sequence
    prompt_format: str                 # "qa" or "chat", resolved
    system_prompt: str | None
    identity: dict                     # everything besides edit and location that fixes a fit
    cache_root: CacheRoot                # a path: the local folder; FitCache(cache_root): the store
    generation: Any = None                          # claim.GenerationSpec (generation metrics)
    side: tuple | None = None                       # token ids of the side-effect texts (if a metric needs them)
    side_identity: dict | None = None
    memo: dict = field(default_factory=dict)        # per-testbed results of edit methods (ITI's directions)
    claim: Any = None                               # the claim, so a late error can name its file
    last_generations: dict | None = None            # the latest judged answers' record (a sample)
    residual: Residual = field(default_factory=Residual)   # a residual-stream location's bases or dictionary
    _reference: Any = None

    @property
    def model(self):
        return self.loaded.model

    @property
    def adapter(self):
        return self.loaded.adapter

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def pad_id(self) -> int:
        return self.loaded.pad_id

    @property
    def key(self) -> str:
        return content_key(self.identity)

    def sites(self, kind: str) -> tuple:
        """Every site of `kind` a location can hold: the model's, or the claim's dictionary's latents."""
        return self.residual.sites(kind, self.adapter)

    def basis_of(self, location):
        """(k, width) orthonormal rows spanning a location in the residual stream (a subspace,
        SAE latents)."""
        return self.residual.basis_of(location, self.adapter.model_width)

    @property
    def reference(self):
        """(n_train, 2) log pi0 of chosen and rejected: computed once, and only if an edit has
        to be trained (a run served from the cache never needs it)."""
        if self._reference is None:
            from loccheck.models.scoring import all_pair_logprobs

            device = next(self.model.parameters()).device
            self._reference = all_pair_logprobs(self.model, self.train, self.pad_id).to(device)
        return self._reference

    def score(self, names: Sequence[str], *, split: str = "test", on_batch=None) -> dict[str, float]:
        """The named metrics of the model as it is now (edited or not) on `split`."""
        from loccheck.metrics import METRICS, compute_metrics

        inputs = {need: self._inputs(need, split, on_batch) for need in {METRICS[n].needs for n in names}}
        return compute_metrics(names, inputs)

    def _inputs(self, need: str, split: str, on_batch):
        from loccheck.models.scoring import all_choice_logprobs, all_pair_logprobs

        if need == "pair_logprobs":
            return all_pair_logprobs(self.model, getattr(self, split), self.pad_id, on_batch=on_batch).numpy()
        if need == "choice_logprobs":
            return all_choice_logprobs(self.model, self.choices(split), self.pad_id, on_batch=on_batch)
        if need == "side_texts":
            from loccheck.models.scoring import side_effects

            if self.side is None:
                raise ValueError("this testbed has no side-effect texts: its claim lists no metric that needs them")
            return side_effects(self.model, self.side, self.pad_id, on_batch=on_batch)
        if need == "generations":
            return self._judged_answers(split, on_batch)
        raise ValueError(f"the testbed cannot compute metric input {need!r}")

    def input_identity(self, need: str) -> dict | None:
        """What a metric input depends on beyond the testbed's identity (the side-effect texts;
        the generation settings and the judge)."""
        if need == "side_texts":
            return self.side_identity
        if need == "generations":
            from loccheck.data.prompts import generation_prompt

            g = self.generation
            return {"max_new_tokens": g.max_new_tokens, "show_answers": g.show_answers,
                    "prompt": generation_prompt(self.tokenizer, "{question}", self.prompt_format, self.system_prompt),
                    # how verdicts are read from the judge's (cached) replies and embeddings
                    "numerics": versions("judges"), **self.judge.identity}
        return None

    @property
    def judge(self):
        if "judge" not in self.memo:
            from loccheck.metrics.judges import make_judge

            self.memo["judge"] = make_judge(self.generation, self.cache_root,
                                            str(next(self.model.parameters()).device))
        return self.memo["judge"]

    def answers_to_generate(self, split: str) -> list[tuple]:
        """(prompt ids, question, true references, false references) per question of `split`,
        the prompt as TruthfulQA's generation task builds it (`prompts.generation_prompt`)."""
        key = ("to generate", split)
        if key not in self.memo:
            from loccheck.metrics.generation import generation_inputs

            self.memo[key] = generation_inputs(self.data, split, self.tokenizer, self.prompt_format,
                                               self.system_prompt)
        return self.memo[key]

    def _judged_answers(self, split: str, on_batch):
        """The judge's verdicts on the greedy answers to `split`'s questions; the answers'
        record (counts and the first `generation.show_answers`) goes to `last_generations`."""
        from loccheck.metrics.generation import check_unread, generations_record
        from loccheck.data.prompts import answer_ended, cut_answer
        from loccheck.models.scoring import greedy_answers

        def ended(tokens):            # later tokens cannot change the cut answer
            return answer_ended(self.tokenizer.decode(tokens, skip_special_tokens=True), self.prompt_format)
        todo = self.answers_to_generate(split)
        tokens = greedy_answers(self.model, [p for p, _, _, _ in todo], self.pad_id,
                                self.tokenizer.eos_token_id, self.generation.max_new_tokens,
                                on_batch=on_batch, done=ended)
        texts = [cut_answer(self.tokenizer.decode(t, skip_special_tokens=True), self.prompt_format)
                 for t in tokens]
        questions = [q for _, q, _, _ in todo]
        try:
            verdicts = self.judge.judge(texts, [ok for _, _, ok, _ in todo], [bad for _, _, _, bad in todo],
                                        questions=questions)
            self.last_generations = generations_record(questions, texts, verdicts, self.generation.show_answers)
            check_unread(self.last_generations, verdicts.unread, self.generation.judge_max_unread)
        except LoccheckError as err:
            raise (self.claim.error(err.key, err.msg) if self.claim is not None and err.key else err) from None
        return verdicts

    def choices(self, split: str) -> list:
        """Every true and false answer of each question of `split`, tokenized (once)."""
        from loccheck.data.prompts import tokenize_choices

        key = ("choices", split)
        if key not in self.memo:
            groups = self.data.groups[split]
            questions = [self.data.answers[g] for g in groups if g in self.data.answers]
            self.memo[key] = tokenize_choices(self.tokenizer, questions, self.prompt_format,
                                              self.system_prompt)
            if not self.memo[key]:
                raise DataError(f"{self.data.source}: no {split} question has a true and a false answer, "
                                "so multiple-choice metrics cannot be computed", key="metrics")
        return self.memo[key]


def kernel_set(device: str) -> str:
    """Which kernels compute on `device`: float results are reproducible bit for bit on one kernel
    set, not across them (AVX-512 and AVX2 builds sum in other orders), so a fit cached by one
    kind of CPU is not served to another."""
    import torch

    if device.startswith("cpu"):
        return f"cpu:{torch.backends.cpu.get_cpu_capability()}"
    if device.startswith("cuda"):
        return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
    return device


def prepare_testbed(claim, cache_root: CacheRoot | Path, inputs: ClaimInputs | None = None, given=None,
                    bases: dict | None = None) -> Testbed:
    """The claim's testbed: its inputs (inspected here unless given) and the model's weights
    (`given`, or the inputs' source, a passed-in `models.given.GivenModel`: that model as it is).
    `bases`: subspaces a heuristic proposed (basis id -> rows), for a testbed built elsewhere."""
    from loccheck.models.given import GivenModel
    from loccheck.models.loading import load_weights

    cache_root = resolve_cache(cache_root)           # a plain folder: it holds the fit entries too
    inputs = inputs if inputs is not None else inspect_claim(claim, cache_root, given)
    if isinstance(inputs.source, GivenModel):        # passed in: used as it is, never loaded
        loaded = inputs.source.loaded()
    else:
        try:
            loaded = load_weights(inputs.source, device=inputs.device, dtype=inputs.dtype)
        except LoccheckError as err:
            raise claim.error(err.key or "model.name", err.msg) from None
    bs, data, splits = claim.behavior, inputs.data, inputs.splits
    side, side_identity = inputs.side, inputs.side_identity
    if bs.dataset == "known_facts":
        data, splits = _known_facts(claim, inputs, loaded, cache_root)
        # the facts kept are known only now: the side-effect texts pass over these ones
        side, side_identity = side_texts(claim, loaded.tokenizer, model_context(loaded.model.config), data)
    # loccheck's version is not part of it: a release that changes no numbers keeps every fit
    identity = {"code": numerics_identity(*TESTBED),
                "model": {"weights": loaded.weights_id, "commit": loaded.info["commit"],
                          "dtype": loaded.info["dtype"], "device": loaded.info["device"].split(":")[0],
                          "kernels": kernel_set(loaded.info["device"])},
                "data": {"sha256": data.sha256, "dataset": bs.dataset,
                         "split": claim.effective_config()["behavior"]["split"],
                         "max_questions": bs.max_questions,
                         "max_pairs_per_question": bs.max_pairs_per_question,
                         "prompt_format": inputs.prompt_format, "system_prompt": bs.system_prompt,
                         **({"kept": data.kept["rule"]} if data.kept else {})},
                **({"residual": inputs.residual.identity} if inputs.residual and inputs.residual.identity else {})}
    testbed = Testbed(loaded, data, splits["train"], splits["validation"], splits["test"],
                      inputs.prompt_format, bs.system_prompt, identity, cache_root,
                      generation=claim.generation, side=side, side_identity=side_identity, claim=claim,
                      residual=inputs.residual or Residual())
    testbed.residual.bases.update(bases or {})
    return testbed


def _known_facts(claim, inputs: ClaimInputs, loaded, cache_root: CacheRoot):
    """For `dataset: known_facts`, the data again with only the facts this model completes
    correctly (which needs its weights), and its splits tokenized."""
    from loccheck.cache import FitCache
    from loccheck.data.known_facts import KNOWN_RULE

    identity = {"weights": loaded.weights_id, "dtype": loaded.info["dtype"],
                "code": numerics_identity("models", "data", "scoring"),
                "data": inputs.data.sha256, "prompt_format": inputs.prompt_format}
    keep = _known_filter(loaded, inputs.prompt_format, FitCache(cache_root), identity)
    data = load_claim_data(claim, keep=keep, keep_rule=KNOWN_RULE)
    return data, tokenized_splits(claim, data, loaded.tokenizer, inputs.prompt_format,
                                   model_context(loaded.model.config))


def _known_filter(loaded, prompt_format: str, cache, identity: dict):
    """`keep(pairs) -> [bool]` for load_behavior: whether the model completes each fact's prompt
    with its true attribute (the pair's rejected answer) greedily. Answers are cached per
    model, data and prompt format (`identity`), so each fact is checked once."""
    from loccheck.cache import content_key
    from loccheck.data.prompts import answer_ids, prompt_ids
    from loccheck.data.known_facts import KNOWN_RULE
    from loccheck.models.scoring import greedy_matches

    key = content_key({"what": "known facts", "rule": KNOWN_RULE, **identity})
    known: dict[str, bool] = dict((cache.get(key) or {}).get("known", {}))

    def keep(pairs) -> list[bool]:
        todo = list(dict.fromkeys(p.prompt for p in pairs if p.prompt not in known))
        if todo:
            true = {p.prompt: p.rejected for p in pairs}
            tok = loaded.tokenizer
            flags = greedy_matches(loaded.model, [prompt_ids(tok, q, prompt_format, None) for q in todo],
                                   [answer_ids(tok, true[q], prompt_format) for q in todo], loaded.pad_id)
            known.update(zip(todo, flags))
            cache.put(key, {"known": known})
        return [bool(known[p.prompt]) for p in pairs]
    return keep
