"""The claim's fixed sections (model, behavior, location, random_locations, verdict, ...) and the
`edits:` and `heuristic:` sections assembled from the registries, each chosen by its `method:`:
each method declares its section next to its code (loccheck/edits/, loccheck/heuristics/)."""
from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, Discriminator, Field, StrictBool, StrictInt, Tag, model_validator

from loccheck.edits import EDIT_METHODS
from loccheck.heuristics import HEURISTICS
from loccheck.locations import LatentLoc, make_location, parse_location, parse_site
from loccheck.metrics import METRICS
from loccheck.schema import Number, Section, Seed, fail
from loccheck.stats.null import MAX_N_NULL, MAX_N_NULL_WHY

DEFAULT_N_NULL = 100        # random_locations.n when not given (and the draw is random)
DEFAULT_N_NECESSITY = 99    # necessity.n: ablations are cheap, and 99 draws reach p = 0.01


def _site(text: str) -> str:
    return str(parse_site(text))  # canonical spelling; raises ValueError with the bad value


def metric_name(name: str) -> str:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; expected one of: {', '.join(METRICS)}")
    return name


def _device(text: str) -> str:
    if re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", text) is None:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {text!r}")
    return text


def one_sentence(text: str) -> str:
    text = text.strip()
    if not text or "\n" in text:
        raise ValueError("claim must be one non-empty sentence on one line")
    return text


def _by_method(registry, default: str):
    """A union of the registry's claim sections, chosen by `method:` (default when absent)."""
    def tag(value):
        if isinstance(value, dict):
            return value.get("method", default)
        return getattr(value, "method", None)
    members = tuple(Annotated[item.section, Tag(name)] for name, item in registry.items())
    return Annotated[Union[members], Discriminator(tag)]


EditSection = _by_method(EDIT_METHODS, "optimal")
HeuristicSection = _by_method(HEURISTICS, "manual")


class ModelSpec(Section):
    name: str = Field("smollm2-135m-instruct", description="Model name (a known alias or a Hugging Face repo id).")
    revision: str | None = Field(None, description="Model revision (branch, tag or commit); quote it in YAML.")
    device: Annotated[str, AfterValidator(_device)] = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype.")
    trust_remote_code: StrictBool = Field(False, description="Allow the model repo to run its own code.")


class SplitSpec(Section):
    train: Number = Field(0.6, gt=0, le=1, description="Fraction of questions used to train the edits.")
    validation: Number = Field(0.2, ge=0, le=1, description="Fraction of questions for the heuristic and ITI's alpha.")
    test: Number = Field(0.2, gt=0, le=1, description="Fraction of questions the verdict is computed on.")
    seed: Seed = Field(0, description="Seed of the question shuffle before splitting.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitSpec":
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise fail(f"train + validation + test must sum to 1, got {total:g}")
        return self


class BehaviorSpec(Section):
    dataset: Literal["truthfulqa", "jsonl", "known_facts"] = Field(
        "truthfulqa", description="Source of preference pairs: TruthfulQA, a JSONL file of pairs, or "
                                  "ROME's known facts (known_1000.json; a counterfactual target over "
                                  "the true attribute, for the facts the model completes correctly).")
    path: str | None = Field(None, description="Path of the data file (required when dataset is 'jsonl'; "
                                               "else found in $LOCCHECK_DATA_DIR).")
    prompt_format: Literal["auto", "chat", "qa", "text"] = Field(
        "auto", description="How questions are turned into prompts: 'qa' (\"Q: ... A:\"), 'chat' (the "
                            "chat template), 'text' (as written: facts to complete); 'auto' is "
                            "'text' for known_facts, else 'chat' when the model has a template, else 'qa'.")
    system_prompt: str | None = Field(None, description="System prompt for chat-formatted prompts.")
    max_questions: StrictInt | None = Field(None, ge=1, description="Use at most this many questions.")
    max_pairs_per_question: StrictInt | None = Field(None, ge=1, description="At most this many pairs per question.")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Question-level train/validation/test split.")

    @model_validator(mode="after")
    def _jsonl_needs_path(self) -> "BehaviorSpec":
        if self.dataset == "jsonl" and self.path is None:
            raise fail("dataset: jsonl needs a path", at=("path",))
        return self


class SideEffectsSpec(Section):
    path: str | None = Field(None, description="Texts unrelated to the behaviour for the side-effect "
                                               "metrics (kl, log_likelihood): ROME's known_1000.json, a "
                                               "JSONL file of {\"text\": ...}, or one text per line; "
                                               "default: $LOCCHECK_DATA_DIR/known_1000.json.")
    n_texts: StrictInt = Field(100, ge=1, le=10000, description="Use the first this many texts.")


def _judge_url(url: str) -> str:
    from loccheck.metrics.judges import check_base_url

    if (why := check_base_url(url)) is not None:
        raise ValueError(why)
    return url


class GenerationSpec(Section):
    max_new_tokens: StrictInt = Field(32, ge=1, le=512, description="Length cap of each greedy answer "
                                                                    "(the generation metrics: truth, info, "
                                                                    "truth_info, truth_and_info).")
    show_answers: StrictInt = Field(5, ge=0, le=100, description="How many answers (those to the first test "
                                                                 "questions) result.json records per edit, "
                                                                 "and the report shows for the unedited "
                                                                 "model, the claim and the whole model.")
    judge: Literal["offline", "openai"] = Field(
        "offline", description="Who judges the answers: 'offline', sentence embeddings against the "
                               "reference answers (no network); 'openai', any OpenAI-compatible "
                               "chat-completions endpoint (key from LOCCHECK_JUDGE_API_KEY or "
                               "OPENAI_API_KEY).")
    judge_model: str | None = Field(None, description="The judge's model name (judge: openai).")
    judge_base_url: Annotated[str, AfterValidator(_judge_url)] | None = Field(
        None, description="The judge's base URL (default: LOCCHECK_JUDGE_BASE_URL, then OPENAI_BASE_URL).")
    judge_max_tokens: StrictInt | None = Field(
        512, ge=1, le=65536, description="max_tokens of each judge request (judge: openai); room for a "
                                         "reasoning model's thinking before its yes or no; null sends none.")
    judge_temperature: Number | None = Field(
        0.0, ge=0, le=2, description="temperature of each judge request (judge: openai); null sends none "
                                     "(for models that accept only their default).")
    judge_max_unread: Number = Field(
        0.1, ge=0, lt=1, description="The largest share of one edit's judge replies that may be unreadable "
                                     "(neither yes nor no): each is that answer's missing value; past it "
                                     "the run fails.")

    @model_validator(mode="after")
    def _judge_model(self) -> "GenerationSpec":
        if self.judge == "openai" and not self.judge_model:
            raise fail("judge: openai needs judge_model (the endpoint's model name)", ("judge_model",))
        return self


def _sha256(text: str) -> str:
    if re.fullmatch(r"[0-9a-f]{64}", text) is None:
        raise ValueError(f"sha256 must be 64 lower-case hex digits, got {text!r}")
    return text


class SubspaceSpec(Section):
    layer: StrictInt = Field(description="The subspace lies in the residual stream after this decoder layer (0-based).", ge=0)
    basis: str = Field(description="File of its basis vectors, one per row, each of the model's width: .npy, "
                                   ".npz or .safetensors (with `key`), or .pt of plain tensors; a path "
                                   "relative to the claim file. Orthonormalised when read.")
    key: str | None = Field(None, description="The array's name in an .npz, .safetensors or .pt file.")
    sha256: Annotated[str, AfterValidator(_sha256)] | None = Field(
        None, description="sha256 of the basis file; checked when given (`loccheck localize` writes it).")


class DictionarySpec(Section):
    path: str = Field(description="The sparse autoencoder's weights (.safetensors, .npz, .npy or .pt), "
                                  "relative to the claim file; never downloaded.")
    key: str | None = Field(None, description="Name of the decoder matrix in the file (SAELens: W_dec), "
                                              "(n_latents, width) or (width, n_latents).")
    layer: StrictInt = Field(description="The dictionary reads and writes the residual stream after this "
                                         "decoder layer (0-based).", ge=0)
    hook: Literal["resid_post"] = Field("resid_post", description="Where at that layer: the residual stream "
                                                                  "after the layer (the one hook point supported).")
    sha256: Annotated[str, AfterValidator(_sha256)] | None = Field(
        None, description="sha256 of the dictionary file; checked when given.")


class LocationSpec(Section):
    sites: tuple[Annotated[str, AfterValidator(_site)], ...] = Field(
        (), description="Claimed sites, all of one kind: heads as 'L{layer}H{head}', MLP layers as "
                        "'L{layer}M', MLP neurons as 'L{layer}N{unit}', all 0-based, e.g. ['L12H3', 'L14H0'].")
    subspace: SubspaceSpec | None = Field(None, description="A subspace of the residual stream after a "
                                                            "layer, from a file of basis vectors.")
    latents: tuple[Annotated[StrictInt, Field(ge=0)], ...] = Field(
        (), description="Latents (0-based indices) of `dictionary`: the location is the span of their "
                        "decoder rows.")
    dictionary: DictionarySpec | None = Field(None, description="The sparse autoencoder `latents` index.")
    from_heuristic: StrictBool = Field(False, description="Take the top_k sites proposed by the heuristic instead.")

    @model_validator(mode="after")
    def _one_source(self) -> "LocationSpec":
        seen: dict[str, int] = {}
        for i, site in enumerate(self.sites):
            if site in seen:
                raise fail(f"duplicate site {site} (also sites[{seen[site]}])", at=("sites", i))
            seen[site] = i
        kinds = [parse_site(s).kind for s in self.sites]
        for i, kind in enumerate(kinds):
            if kind != kinds[0]:
                raise fail(f"a location holds sites of one kind: {self.sites[i]} is a {kind} site, "
                           f"{self.sites[0]} a {kinds[0]} site", at=("sites", i))
        for i, site in enumerate(self.sites):
            if not type(parse_site(site)).listed:
                raise fail(f"{site} is not a site to list: name a subspace under `subspace:` and SAE "
                           "latents under `latents:` with their `dictionary:`", at=("sites", i))
        given = [name for name in ("sites", "subspace", "latents", "from_heuristic") if getattr(self, name)]
        if len(given) > 1:
            raise fail(f"give one of sites, subspace, latents or from_heuristic: true, not {' and '.join(given)}",
                       at=(given[1],))
        if not given:
            raise fail("location needs non-empty sites (e.g. [L12H3]), a subspace, latents of a dictionary, "
                       "or from_heuristic: true", at=("sites",))
        for i, latent in enumerate(self.latents):
            if latent in self.latents[:i]:
                raise fail(f"duplicate latent {latent} (also latents[{self.latents.index(latent)}])", at=("latents", i))
        if self.latents and self.dictionary is None:
            raise fail("latents need the dictionary they index (`dictionary: {path: ..., layer: ...}`)",
                       at=("latents",))
        if self.dictionary is not None and not self.latents:
            raise fail("a dictionary needs the claimed `latents` (its indices)", at=("dictionary",))
        return self

    @property
    def kind(self) -> str | None:
        """The kind of the claimed location (None when the heuristic picks it)."""
        if self.subspace is not None:
            return "subspace"
        if self.latents:
            return "latent"
        return parse_site(self.sites[0]).kind if self.sites else None

    @property
    def parsed(self) -> tuple:
        """The claimed sites as a location (sorted), or () when the heuristic picks them or the
        location is a subspace (its basis is read with the data: `run.inspect`)."""
        if self.latents:
            return make_location(LatentLoc(self.dictionary.layer, i) for i in self.latents)
        return parse_location(self.sites) if self.sites else ()


class RandomLocationsSpec(Section):
    n: StrictInt | None = Field(None, description=f"Number of random locations in the null (n_null), 1 to {MAX_N_NULL} "
                                                  "(default 100); with draw: every it is not given: the null is "
                                                  "every other location of the claim's shape, once.")
    stop: Literal["sequential", "full"] = Field(
        "sequential", description="'sequential': fit the null's locations in their seeded order and "
                                  "stop once the verdict at alpha is decided (Besag and Clifford 1991: "
                                  "enough of them edit as well as the claim); a claim the full null "
                                  "would support still fits all n. 'full': always fit all n.")
    match_layers: StrictBool = Field(False, description="Draw random sites from the claimed sites' layers.")
    draw: Literal["sites", "haar", "every"] | None = Field(
        None, description="How a random location is drawn: 'sites', as many sites of the claim's kind "
                          "(heads, MLP layers, neurons, other latents of the same dictionary), uniformly; "
                          "'haar', a uniformly random subspace of the same dimension at the same layer; "
                          "'every', no draw: every other location of the claim's shape once (in a "
                          "seeded order), for a space small enough to fit whole: the exact permutation "
                          "p-value, with no draw of the claim itself (min p = 1 / the number of "
                          f"locations; at most {MAX_N_NULL} + 1 of them). "
                          "Default: 'haar' for a subspace (its only null), 'sites' otherwise.")
    seed: Seed = Field(0, description="Seed of the random-location draw.")

    @model_validator(mode="after")
    def _in_range(self) -> "RandomLocationsSpec":
        if self.draw == "every":
            if self.n is not None:
                raise fail(f"n is not given with draw: every, which fits every other location of the claim's "
                           f"shape once (their number less the claim), got n: {self.n}; leave n out, or draw "
                           "at random (draw: sites)", at=("n",))
            return self
        if self.n is None:
            object.__setattr__(self, "n", DEFAULT_N_NULL)
        if self.n < 1:  # a null needs at least one draw; say so rather than "greater than or equal to 1"
            raise fail(f"n must be at least 1 (number of random locations in the null), got {self.n}", at=("n",))
        if self.n > MAX_N_NULL:
            raise fail(f"n must be at most {MAX_N_NULL} ({MAX_N_NULL_WHY}), got {self.n}", at=("n",))
        return self


class VerdictSpec(Section):
    metric: Annotated[str, AfterValidator(metric_name)] = Field(
        "preference_margin", description="Metric whose gain is compared between claimed and random "
                                         f"locations; one of: {', '.join(METRICS)}.")
    alpha: Number = Field(0.05, gt=0, lt=1, description="Significance level of the test against random locations.")
    rho: Number = Field(0.9, gt=0, le=1, description="Fraction of the whole-model effect the location must reach.")


# The claim's tests, in the order the report shows them. `editing` and `necessity` each give a
# verdict (their p-values share alpha by Holm's method); `without` and `minimality` measure.
TESTS = {
    "editing": "the optimal edit at the location against optimal edits at random locations of its size",
    "necessity": "how much of the behaviour is lost when the location is ablated, against random locations",
    "without": "the optimal whole-model edit with the location's sites left out, against the ceiling",
    "minimality": "each site of the location left out in turn (refitted, and ablated for necessity)",
}
VERDICT_TESTS = ("editing", "necessity")


def test_name(name: str) -> str:
    if name not in TESTS:
        raise ValueError(f"unknown test {name!r}; expected one of: {', '.join(TESTS)}")
    return name


def _ablation_name(name: str) -> str:
    from loccheck.ablations import ABLATIONS

    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; expected one of: {', '.join(ABLATIONS)}")
    return name


class NecessitySpec(Section):
    ablation: Annotated[str, AfterValidator(_ablation_name)] = Field(
        "mean", description="How a location is removed: 'mean' (its activations replaced by their mean "
                            "over the train split's tokens), 'resample' (by the activations at a random "
                            "train token), 'zero'.")
    n: StrictInt | None = Field(None, description=f"Random locations ablated for the necessity null, 1 to {MAX_N_NULL} "
                                                  f"(default {DEFAULT_N_NECESSITY}): the editing null's draws first, "
                                                  "then more of the same seed. An ablation trains nothing, so this "
                                                  "can be larger than the editing null. Not given with "
                                                  "random_locations.draw: every, whose null is every other location.")
    stop: Literal["sequential", "full"] = Field(
        "sequential", description="As random_locations.stop: stop ablating once the test is decided.")
    seed: Seed = Field(0, description="Seed of the resample ablation's draws of train tokens.")
    behavior: Literal["auto", "chosen", "rejected"] = Field(
        "auto", description="Which answer of each pair the model's behaviour prefers, so what ablating it "
                            "loses: 'chosen' (the data ask for the model's own behaviour, as TruthfulQA's "
                            "truthful answers), 'rejected' (the data ask to edit it away, as known facts' "
                            "counterfactual pairs, whose rejected answer is the fact the model knows); "
                            "'auto': rejected for known_facts, chosen otherwise.")

    @model_validator(mode="after")
    def _in_range(self) -> "NecessitySpec":
        if self.n is not None and not 1 <= self.n <= MAX_N_NULL:
            raise fail(f"n must be between 1 and {MAX_N_NULL}, got {self.n}", at=("n",))
        return self


class SizeCurveSpec(Section):
    sizes: tuple[StrictInt, ...] = Field(
        min_length=1, description="Location sizes (sites, or a subspace's dimensions) at which random "
                                  "locations are fitted (and ablated, when necessity is tested).")
    n: StrictInt = Field(5, ge=1, le=100, description="Random locations per size (fewer than the main null).")

    @model_validator(mode="after")
    def _positive(self) -> "SizeCurveSpec":
        for i, size in enumerate(self.sizes):
            if size < 1:
                raise fail(f"a size must be a positive number of sites, got {size}", at=("sizes", i))
            if size in self.sizes[:i]:
                raise fail(f"size {size} is listed twice", at=("sizes", i))
        return self


MAX_BOOTSTRAP = 1000    # each resample reruns the heuristic; 1000 resolve a frequency to about 0.03


class StabilitySpec(Section):
    bootstrap: StrictInt = Field(
        0, description="Reruns of the claim's heuristic on bootstrap resamples of its train questions (by "
                       "question, with replacement), reported as how often each claimed site, and the whole "
                       f"claimed set, is selected again: 0 (not measured) or 2 to {MAX_BOOTSTRAP}. Each costs "
                       "one run of the heuristic (probing: seconds, activations reused; tracing: a full trace).")
    seed: Seed = Field(0, description="Seed of the resamples.")

    @model_validator(mode="after")
    def _in_range(self) -> "StabilitySpec":
        if self.bootstrap != 0 and not 2 <= self.bootstrap <= MAX_BOOTSTRAP:
            raise fail(f"bootstrap must be 0 (not measured) or between 2 and {MAX_BOOTSTRAP} resamples (one "
                       f"rerun of the heuristic each; a frequency needs at least two), got {self.bootstrap}",
                       at=("bootstrap",))
        return self


class EvidenceSpec(Section):
    bundle: str | None = Field(
        None, description="Folder of this claim's evidence bundle, relative to the claim file: where "
                          "`loccheck verify` writes it and a replay reads it (default: the evidence option's "
                          "DIR/<claim name>).")
    replay: bool = Field(
        False, description="The pytest plugin derives this claim's verdict from its bundle (no model, no "
                           "torch) instead of verifying it: for a claim whose fits take a GPU. `loccheck "
                           "verify` still verifies it, and records the bundle.")
