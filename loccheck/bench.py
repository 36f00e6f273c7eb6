"""The bench: what every fit of one claim shares. The loaded model and its adapter, the data
split by question and tokenized, the unedited model's reference log-probabilities, and the
identity of all of it (the part of every cache key that is not the edit or the location).
Prepared once per claim (and once per worker when fits run elsewhere)."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from loccheck import __version__
from loccheck.cache import code_identity, content_key
from loccheck.errors import DataError, LoccheckError


@dataclass
class Bench:
    loaded: Any                        # models.loading.LoadedModel (model, tokenizer, adapter)
    data: Any                          # data.BehaviorData
    train: Sequence                    # tokenized pairs (prompts.TokenizedPair)
    validation: Sequence
    test: Sequence
    prompt_format: str                 # "qa" or "chat", resolved
    system_prompt: str | None
    identity: dict                     # everything besides edit and location that fixes a fit
    cache_root: Path
    generation: Any = None                          # claim.GenerationSpec (generation metrics)
    side: tuple | None = None                       # token ids of the side-effect texts (if a metric needs them)
    side_identity: dict | None = None
    memo: dict = field(default_factory=dict)        # per-bench results of edit methods (ITI's directions)
    claim: Any = None                               # the claim, so a late error can name its file
    last_generations: dict | None = None            # the latest judged answers' record (a sample)
    on_step: Callable | None = None                 # (step, n_steps, loss) while a fit runs here
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

    @property
    def reference(self):
        """(n_train, 2) log pi0 of chosen and rejected: computed once, and only if an edit has
        to be trained (a run served from the cache never needs it)."""
        if self._reference is None:
            from loccheck.scoring import all_pair_logprobs

            device = next(self.model.parameters()).device
            self._reference = all_pair_logprobs(self.model, self.train, self.pad_id).to(device)
        return self._reference

    def score(self, names: Sequence[str], *, split: str = "test", on_batch=None) -> dict[str, float]:
        """The named metrics of the model as it is now (edited or not) on `split`."""
        from loccheck.metrics import METRICS, compute_metrics

        inputs = {need: self._inputs(need, split, on_batch) for need in {METRICS[n].needs for n in names}}
        return compute_metrics(names, inputs)

    def _inputs(self, need: str, split: str, on_batch):
        from loccheck.scoring import all_choice_logprobs, all_pair_logprobs

        if need == "pair_logprobs":
            return all_pair_logprobs(self.model, getattr(self, split), self.pad_id, on_batch=on_batch).numpy()
        if need == "choice_logprobs":
            return all_choice_logprobs(self.model, self.choices(split), self.pad_id, on_batch=on_batch)
        if need == "side_texts":
            from loccheck.scoring import side_effects

            if self.side is None:
                raise ValueError("this bench has no side-effect texts: its claim lists no metric that needs them")
            return side_effects(self.model, self.side, self.pad_id, on_batch=on_batch)
        if need == "generations":
            return self._judged_answers(split, on_batch)
        raise ValueError(f"the bench cannot compute metric input {need!r}")

    def input_identity(self, need: str) -> dict | None:
        """What a metric input depends on beyond the bench's identity (the side-effect texts;
        the generation settings and the judge)."""
        if need == "side_texts":
            return self.side_identity
        if need == "generations":
            from loccheck.prompts import generation_prompt

            g = self.generation
            return {"max_new_tokens": g.max_new_tokens, "show_answers": g.show_answers,
                    "prompt": generation_prompt(self.tokenizer, "{question}", self.prompt_format, self.system_prompt),
                    **self.judge.identity}
        return None

    @property
    def judge(self):
        if "judge" not in self.memo:
            from loccheck.judges import make_judge

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
        from loccheck.prompts import answer_ended, cut_answer
        from loccheck.scoring import greedy_answers

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
        from loccheck.prompts import tokenize_choices

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


def check_location_size(claim, adapter) -> None:
    """The claimed location must lie inside the model and leave room for a null."""
    kind = claim.site_kind
    n_sites = len(adapter.sites(kind))
    if claim.location.sites:
        for i, site in enumerate(claim.location.parsed):
            try:
                adapter.check_inside([site])
            except LoccheckError as err:
                raise claim.error(f"location.sites[{claim.location.sites.index(str(site))}]", err.msg) from None
    top_k = getattr(claim.heuristic, "top_k", None) if claim.location.from_heuristic else None
    size = top_k or len(claim.location.sites)
    if size >= n_sites:
        key = "heuristic.top_k" if top_k else "location.sites"
        raise claim.error(key, f"the location would be every {kind} site of the model ({size}); "
                          "there is no random location of the same size to compare with")


@dataclass
class ClaimInputs:
    """What a claim's fits need, read and checked before any weights load: the data, the
    model's files, config and tokenizer, the location against the model, the tokenized splits
    against its context. `loccheck verify a.yaml b.yaml` inspects every claim before it fits
    anything, so bad input in b never costs a's fitting."""
    claim: Any
    data: Any                          # data.BehaviorData
    source: Any                        # models.loading.ModelSource
    prompt_format: str
    splits: dict                       # split name -> tokenized pairs
    device: str
    dtype: str
    side: tuple | None = None          # tokenized side-effect texts, when a metric needs them
    side_identity: dict | None = None


def inspect_claim(claim, cache_root: Path) -> ClaimInputs:
    """Load the claim's data, open its model (not the weights), check the location, tokenize."""
    from loccheck.models.loading import open_model, resolve_device, resolve_dtype
    from loccheck.prompts import resolve_format

    ms, bs = claim.model, claim.behavior
    data = _load_data(claim)            # data first: a bad data path fails before a model is opened
    try:
        device = resolve_device(ms.device)
        dtype = str(resolve_dtype(ms.dtype, device)).removeprefix("torch.")
        source = open_model(ms.name, revision=ms.revision, trust_remote_code=ms.trust_remote_code,
                            cache=cache_root)
        adapter = source.adapter()
    except LoccheckError as err:
        raise claim.error(err.key or "model.name", err.msg) from None
    check_location_size(claim, adapter)
    _check_edit_settings(claim)
    try:
        fmt = ("text" if bs.dataset == "known_facts" and bs.prompt_format == "auto" else
               resolve_format(source.tokenizer, bs.prompt_format, bs.system_prompt))
    except DataError as err:
        raise claim.error(err.key or _data_key(claim), err.msg) from None
    splits = _tokenized_splits(claim, data, source.tokenizer, fmt, _context(source.config))
    side, side_identity = _side_texts(claim, source.tokenizer, _context(source.config), data)
    _check_judge(claim, cache_root)
    _check_generation_prompts(claim, data, source.tokenizer, fmt, _context(source.config))
    return ClaimInputs(claim, data, source, fmt, splits, str(device), dtype, side, side_identity)


def _check_edit_settings(claim) -> None:
    """Each edit method's settings can be made (a method may read a file for them)."""
    from loccheck.edits import EDIT_METHODS

    size = len(claim.location.sites) or getattr(claim.heuristic, "top_k", None) or 1
    for i, section in enumerate(claim.edits):
        try:
            EDIT_METHODS[section.method].settings(section, size=size, claim_size=size, site_kind=claim.site_kind,
                                                  verdict_metric=claim.verdict.metric)
        except LoccheckError as err:
            # a method names its own field ("stats_path"); "edits" or none: the section itself
            field = f"edits[{i}]" + (f".{err.key}" if err.key and err.key != "edits" else "")
            raise claim.error(field, err.msg) from None


def _data_key(claim) -> str:
    return "behavior.path" if claim.behavior.path else "behavior.dataset"


def _context(config) -> int | None:
    return getattr(config, "max_position_embeddings", None)


def _load_data(claim, keep=None, keep_rule: str = ""):
    from loccheck.data import load_behavior

    bs = claim.behavior
    try:
        return load_behavior(dataset=bs.dataset, path=bs.path,
                             base_dir=claim.path.parent if claim.path is not None else None,
                             split=(bs.split.train, bs.split.validation, bs.split.test),
                             split_seed=bs.split.seed, max_questions=bs.max_questions,
                             max_pairs_per_question=bs.max_pairs_per_question, keep=keep,
                             keep_rule=keep_rule)
    except DataError as err:
        raise claim.error(err.key or _data_key(claim), err.msg) from None


def _tokenized_splits(claim, data, tokenizer, fmt: str, context: int | None) -> dict:
    """The splits' pairs as token ids, each checked against the model's context."""
    from loccheck.edits import EDIT_METHODS
    from loccheck.prompts import tokenize_pairs

    bs = claim.behavior
    try:
        splits = {name: tokenize_pairs(tokenizer, getattr(data, name), fmt, bs.system_prompt,
                                       max_tokens=context, source=data.source)
                  for name in ("train", "validation", "test")}
    except DataError as err:
        raise claim.error(err.key or _data_key(claim), err.msg) from None
    needed = ["train", "test"] + (["validation"] if any(
        EDIT_METHODS[e.method].uses_validation for e in claim.edits) else [])
    for name in needed:
        if not splits[name]:
            raise claim.error("behavior.split", f"{data.source}: the {name} split has no usable "
                              "preference pairs after tokenization (behavior.max_questions / behavior.split)")
    return splits


def _known_facts(claim, inputs: ClaimInputs, loaded, cache_root: Path):
    """For `dataset: known_facts`, the data again with only the facts this model completes
    correctly (which needs its weights), and its splits tokenized."""
    from loccheck.cache import FitCache
    from loccheck.facts import KNOWN_RULE, known_filter

    identity = {"weights": loaded.weights_id, "dtype": loaded.info["dtype"], "code": code_identity(),
                "data": inputs.data.sha256, "prompt_format": inputs.prompt_format}
    keep = known_filter(loaded, inputs.prompt_format, FitCache(cache_root), identity)
    data = _load_data(claim, keep=keep, keep_rule=KNOWN_RULE)
    return data, _tokenized_splits(claim, data, loaded.tokenizer, inputs.prompt_format,
                                   _context(loaded.model.config))


def _check_judge(claim, cache_root: Path) -> None:
    """A generation metric needs its judge; a missing one is found before anything is fitted."""
    from loccheck.judges import minilm_folder
    from loccheck.metrics import METRICS

    if not any(METRICS[m].needs == "generations" for m in claim.all_metrics):
        return
    g = claim.generation
    if g.judge == "openai":
        from loccheck.judges import check_base_url, make_judge

        if importlib.util.find_spec("openai") is None:
            raise claim.error("generation.judge", "judge: openai needs the openai package: pip install 'loccheck[judge]'")
        if g.judge_base_url is None:
            for var in ("LOCCHECK_JUDGE_BASE_URL", "OPENAI_BASE_URL"):
                if os.environ.get(var):
                    if (why := check_base_url(os.environ[var])) is not None:
                        raise claim.error("generation.judge_base_url", f"${var}: {why}")
                    break
        try:
            make_judge(g, cache_root).check()       # one request: endpoint, model and settings
        except LoccheckError as err:
            raise claim.error(err.key or "generation.judge", err.msg) from None
        return
    try:
        minilm_folder(cache_root)
    except LoccheckError as err:
        raise claim.error("generation.judge", err.msg) from None


def _check_generation_prompts(claim, data, tokenizer, fmt: str, context: int | None) -> None:
    """Each test question's generation prompt and its longest answer fit the model's context."""
    from loccheck.metrics import METRICS
    from loccheck.metrics.generation import generation_inputs

    if context is None or not any(METRICS[m].needs == "generations" for m in claim.all_metrics):
        return
    longest = max((len(p) for p, _, _, _ in generation_inputs(data, "test", tokenizer, fmt,
                                                                claim.behavior.system_prompt)), default=0)
    if longest + claim.generation.max_new_tokens > context:
        raise claim.error("generation.max_new_tokens",
                          f"the longest generation prompt is {longest} tokens and the model reads at "
                          f"most {context}: at most {max(context - longest, 0)} new tokens fit")


MAX_SIDE_TOKENS = 256   # side-effect texts are sentences; a longer one is cut here


def _side_texts(claim, tokenizer, context: int | None, data=None):
    """The side-effect texts, tokenized, if a listed metric needs them (else (None, None));
    none of them is one of `data`'s facts (a known-facts claim's own facts, every split)."""
    from loccheck.data import load_side_texts
    from loccheck.metrics import METRICS

    if not any(METRICS[m].needs == "side_texts" for m in claim.all_metrics):
        return None, None
    spec = claim.side_effects
    own = [data.facts[p.prompt] for split in ((data.train, data.validation, data.test) if data else ())
           for p in split if p.prompt in data.facts]
    try:
        texts = load_side_texts(spec.path, base_dir=claim.path.parent if claim.path is not None else None,
                                n_texts=spec.n_texts, exclude_subjects={f.subject for f in own},
                                exclude_prompts={f.prompt for f in own})
    except DataError as err:
        raise claim.error(err.key or "side_effects.path", err.msg) from None
    cap = min(MAX_SIDE_TOKENS, context or MAX_SIDE_TOKENS)
    ids = [tuple(tokenizer(t).input_ids[:cap]) for t in texts.texts]
    ids = tuple(t for t in ids if len(t) >= 2)           # a text must predict at least one token
    if not ids:
        raise claim.error("side_effects.path", f"{texts.source}: no text has two or more tokens")
    return ids, {"sha256": texts.sha256, "n_texts": len(ids), "max_tokens": cap,
                 "n_excluded": texts.n_excluded}


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


def prepare_bench(claim, cache_root: Path, inputs: ClaimInputs | None = None) -> Bench:
    """The claim's bench: its inputs (inspected here unless given) and the model's weights."""
    from loccheck.models.loading import load_weights

    inputs = inputs if inputs is not None else inspect_claim(claim, cache_root)
    try:
        loaded = load_weights(inputs.source, device=inputs.device, dtype=inputs.dtype)
    except LoccheckError as err:
        raise claim.error(err.key or "model.name", err.msg) from None
    bs, data, splits = claim.behavior, inputs.data, inputs.splits
    side, side_identity = inputs.side, inputs.side_identity
    if bs.dataset == "known_facts":
        data, splits = _known_facts(claim, inputs, loaded, cache_root)
        # the facts kept are known only now: the side-effect texts pass over these ones
        side, side_identity = _side_texts(claim, loaded.tokenizer, _context(loaded.model.config), data)
    identity = {"loccheck": __version__, "code": code_identity(),
                "model": {"weights": loaded.weights_id, "commit": loaded.info["commit"],
                          "dtype": loaded.info["dtype"], "device": loaded.info["device"].split(":")[0],
                          "kernels": kernel_set(loaded.info["device"])},
                "data": {"sha256": data.sha256, "dataset": bs.dataset,
                         "split": claim.effective_config()["behavior"]["split"],
                         "max_questions": bs.max_questions,
                         "max_pairs_per_question": bs.max_pairs_per_question,
                         "prompt_format": inputs.prompt_format, "system_prompt": bs.system_prompt,
                         **({"kept": data.kept["rule"]} if data.kept else {})}}
    return Bench(loaded, data, splits["train"], splits["validation"], splits["test"],
                 inputs.prompt_format, bs.system_prompt, identity, Path(cache_root),
                 generation=claim.generation, side=side, side_identity=side_identity, claim=claim)
