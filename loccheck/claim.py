"""Claim files: the pydantic schema and `load_claim`, which maps every error to file:line:col.

The YAML is read into plain data and a `{path_tuple: (line, col)}` map by `claim_yaml`; the data
is validated here and each pydantic `loc` looked up in that map. No torch here: the pytest
plugin imports this module.

The `edits:` list and the `heuristic:` section are chosen by their `method:`; each method
declares its section next to its code (loccheck/edits/, loccheck/heuristics/), and this module
assembles them from the registries.
"""
from __future__ import annotations

import difflib
import os
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, Discriminator, Field, PrivateAttr, StrictBool,
                      StrictInt, Tag, ValidationError, model_validator)

from loccheck.edits import EDIT_METHODS
from loccheck.claim_yaml import Loc, Pos, dotted, read_yaml
from loccheck.errors import ClaimError, printable
from loccheck.heuristics import HEURISTICS
from loccheck.locations import parse_location, parse_site
from loccheck.metrics import METRICS
from loccheck.options import MAX_N_NULL, MAX_N_NULL_WHY
from loccheck.schema import Number, Section, Seed, fail
from loccheck.userfiles import read_regular_file

_fail = fail


def _site(text: str) -> str:
    return str(parse_site(text))  # canonical spelling; raises ValueError with the bad value


def _metric(name: str) -> str:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; expected one of: {', '.join(METRICS)}")
    return name


def _device(text: str) -> str:
    if re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", text) is None:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {text!r}")
    return text


def _sentence(text: str) -> str:
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
    from loccheck.judges import check_base_url

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


class LocationSpec(Section):
    sites: tuple[Annotated[str, AfterValidator(_site)], ...] = Field(
        (), description="Claimed sites, all of one kind: heads as 'L{layer}H{head}', 0-based, "
                        "e.g. ['L12H3', 'L14H0'].")
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
        if self.sites and self.from_heuristic:
            raise fail("give either sites or from_heuristic: true, not both", at=("from_heuristic",))
        if not self.sites and not self.from_heuristic:
            raise fail("location needs non-empty sites (e.g. [L12H3]) or from_heuristic: true", at=("sites",))
        return self

    @property
    def parsed(self) -> tuple:
        """The claimed sites as a location (sorted), or () when the heuristic picks them."""
        return parse_location(self.sites) if self.sites else ()


class RandomLocationsSpec(Section):
    n: StrictInt = Field(100, description=f"Number of random locations in the null (n_null), 1 to {MAX_N_NULL}.")
    stop: Literal["sequential", "full"] = Field(
        "sequential", description="'sequential': fit the null's locations in their seeded order and "
                                  "stop once the verdict at alpha is decided (Besag and Clifford 1991: "
                                  "enough of them edit as well as the claim); a claim the full null "
                                  "would support still fits all n. 'full': always fit all n.")
    match_layers: StrictBool = Field(False, description="Draw random sites from the claimed sites' layers.")
    seed: Seed = Field(0, description="Seed of the random-location draw.")

    @model_validator(mode="after")
    def _in_range(self) -> "RandomLocationsSpec":
        if self.n < 1:  # a null needs at least one draw; say so rather than "greater than or equal to 1"
            raise fail(f"n must be at least 1 (number of random locations in the null), got {self.n}", at=("n",))
        if self.n > MAX_N_NULL:
            raise fail(f"n must be at most {MAX_N_NULL} ({MAX_N_NULL_WHY}), got {self.n}", at=("n",))
        return self


class VerdictSpec(Section):
    metric: Annotated[str, AfterValidator(_metric)] = Field(
        "preference_margin", description="Metric whose gain is compared between claimed and random "
                                         f"locations; one of: {', '.join(METRICS)}.")
    alpha: Number = Field(0.05, gt=0, lt=1, description="Significance level of the test against random locations.")
    rho: Number = Field(0.9, gt=0, le=1, description="Fraction of the whole-model effect the location must reach.")


class Claim(Section):
    claim: Annotated[str, AfterValidator(_sentence)] = Field(description="The claim, in one sentence.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Model the claim is about.")
    behavior: BehaviorSpec = Field(default_factory=BehaviorSpec, description="Behaviour and its preference data.")
    location: LocationSpec = Field(description="Sites claimed to carry the behaviour.")
    heuristic: HeuristicSection = Field(default_factory=lambda: HEURISTICS["manual"].section(),
                                        description="How the location was found; chosen by `method:`.")
    edits: tuple[EditSection, ...] = Field(
        default_factory=lambda: (EDIT_METHODS["optimal"].section(),), min_length=1,
        description="Edit methods fitted at each location, each chosen by `method:` ("
                    + ", ".join(EDIT_METHODS) + "); the first one's test gives the verdict, the "
                    "others are reported side by side on the same random locations.")
    metrics: tuple[Annotated[str, AfterValidator(_metric)], ...] = Field(
        ("preference_margin", "preference_accuracy"),
        description="Metrics reported for every edit (the verdict's metric is always computed); "
                    f"one of: {', '.join(METRICS)}.")
    side_effects: SideEffectsSpec = Field(default_factory=SideEffectsSpec,
                                          description="Texts the side-effect metrics are measured on.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec,
                                       description="Generated answers and their judge (generation metrics).")
    random_locations: RandomLocationsSpec = Field(default_factory=RandomLocationsSpec, description="The null.")
    verdict: VerdictSpec = Field(default_factory=VerdictSpec, description="Test and thresholds of the verdict.")
    expect: Literal["SUPPORTED", "SPECIFIC", "SPECIFIC_BUT_WEAK", "FALSIFIED", "NO_EFFECT", "UNDERPOWERED"] | None = Field(
        None, description="Verdict this claim file is expected to get (checked by the pytest plugin).")

    _path: Path | None = PrivateAttr(None)
    _values: dict[Loc, Pos] = PrivateAttr(default_factory=dict)  # where each value starts
    _keys: dict[Loc, Pos] = PrivateAttr(default_factory=dict)  # where each mapping key starts

    @model_validator(mode="after")
    def _consistent(self) -> "Claim":
        seen: dict[str, int] = {}
        for i, edit in enumerate(self.edits):
            if edit.method in seen:
                raise fail(f"edit method {edit.method!r} is listed twice (also edits[{seen[edit.method]}])",
                           ("edits", i, "method"))
            seen[edit.method] = i
        if getattr(self.edits[0], "objective", None) == "dpo":
            raise fail("dpo cannot give the verdict: its loss has no minimum (it only approaches 0 as the "
                       "margin grows without bound), so where an edit stops is set by the learning rate "
                       "and the budget, not by the location; use ipo (dpo edits may follow the first, "
                       "as a budget-matched comparison)", ("edits", 0, "objective"))
        for i, edit in enumerate(self.edits):
            kinds, datasets = EDIT_METHODS[edit.method].site_kinds, EDIT_METHODS[edit.method].datasets
            if self.site_kind is not None and self.site_kind not in kinds:
                raise fail(f"edit method {edit.method!r} edits {' or '.join(k + ' sites' for k in kinds)}, "
                           f"not the claim's {self.site_kind} sites", ("edits", i, "method"))
            if datasets is not None and self.behavior.dataset not in datasets:
                raise fail(f"edit method {edit.method!r} needs behavior.dataset: {' or '.join(datasets)}, "
                           f"not {self.behavior.dataset}", ("edits", i, "method"))
        kind = HEURISTICS[self.heuristic.method].kind
        datasets = HEURISTICS[self.heuristic.method].datasets
        if datasets is not None and self.behavior.dataset not in datasets:
            raise fail(f"heuristic {self.heuristic.method!r} needs behavior.dataset: {' or '.join(datasets)}, "
                       f"not {self.behavior.dataset}", ("heuristic", "method"))
        if self.location.from_heuristic:
            if kind is None:
                raise fail("location.from_heuristic: true needs a heuristic that proposes sites "
                           f"(method: {', '.join(n for n, h in HEURISTICS.items() if h.kind)})",
                           ("heuristic", "method"))
            if getattr(self.heuristic, "top_k", None) is None:
                raise fail("location.from_heuristic: true needs heuristic.top_k", ("heuristic", "top_k"))
        elif kind is not None and self.location.parsed[0].kind != kind:
            raise fail(f"heuristic {self.heuristic.method!r} proposes {kind} sites, but the location "
                       f"holds {self.location.parsed[0].kind} sites", ("heuristic", "method"))
        return self

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def name(self) -> str:
        return self._path.stem if self._path is not None else "claim"

    @property
    def site_kind(self) -> str:
        """The kind of the claimed sites (from the heuristic when it picks them)."""
        if self.location.sites:
            return self.location.parsed[0].kind
        return HEURISTICS[self.heuristic.method].kind

    @property
    def all_metrics(self) -> tuple[str, ...]:
        """The listed metrics, with the verdict's first when it is not among them."""
        listed = tuple(self.metrics)
        return listed if self.verdict.metric in listed else (self.verdict.metric, *listed)

    def error(self, key: str | Loc, msg: str) -> ClaimError:
        """A ClaimError at `key` ('location.sites[3]' or ('location', 'sites', 3)), located at
        its value in the YAML, or at the nearest parent present there."""
        loc = _parse_key(key) if isinstance(key, str) else tuple(key)
        line, col = _lookup(self._values, loc)
        return ClaimError(self._path, line, col, dotted(loc), msg)

    def with_overrides(self, updates: dict[str, object]) -> "Claim":
        """A new validated Claim with dotted keys replaced ({'random_locations.n': 5}).
        Values must already have their YAML types (ints, not '5')."""
        data = self.model_dump(mode="json")  # lists, not tuples, so items can be replaced
        for key, value in updates.items():
            *parents, last = _parse_key(key)
            node: Any = data
            try:
                for part in parents:
                    node = node[part]
                node[last]  # the key must already exist: the dump holds every field
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"`updates` key {key!r} is not a claim field") from None
            node[last] = value
        overridden = [_parse_key(k) for k in updates]
        return _validate(data, self._path, self._values, self._keys, overridden)

    def effective_config(self) -> dict:
        """Every field, defaults filled in, as JSON-ready data (for reports and cache keys)."""
        return self.model_dump(mode="json")


def claim_json_schema() -> dict:
    """JSON schema of claim files, with field descriptions, for editors."""
    return Claim.model_json_schema()


MAX_CLAIM_BYTES = 1 << 20   # a claim is a few dozen lines; refuse /dev/zero-sized input unread


def load_claim(path: str | os.PathLike) -> Claim:
    """Read, parse and validate a claim file; any problem raises one-line ClaimError."""
    path = Path(path)
    try:
        raw = read_regular_file(path, MAX_CLAIM_BYTES + 1)   # a FIFO or device is refused unread
    except OSError as err:
        raise ClaimError(path, None, None, "", f"cannot read claim file: {err.strerror or err}") from None
    if len(raw) > MAX_CLAIM_BYTES:
        raise ClaimError(path, None, None, "", f"claim file is larger than {MAX_CLAIM_BYTES} bytes (1 MiB); "
                         "a claim is a few dozen lines")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ClaimError(path, line, None, "", f"claim file is not valid UTF-8 (byte {err.start})") from None
    return parse_claim(text, path)


def parse_claim(text: str, path: str | os.PathLike | None = None) -> Claim:
    """Parse and validate claim YAML text; `path` is only used in messages and `Claim.name`."""
    path = Path(path) if path is not None else None
    if path is not None:
        _check_name(path)
    if not text.strip():
        raise ClaimError(path, None, None, "", "claim file is empty")
    data, values, keys = read_yaml(text, path)
    if not isinstance(data, dict):
        raise ClaimError(path, *values[()], "", f"claim file must be a mapping (key: value lines), got {_kind(data)}")
    _check_free_text(data, (), path, values)
    return _validate(data, path, values, keys)


# Free text a claim carries into its report, the model's prompts and terminals.
TEXT_KEYS = ("claim", "citation", "notes", "system_prompt")
_BIDI = {*range(0x202A, 0x202F), *range(0x2066, 0x206A)}   # embeddings, overrides and isolates


def _check_free_text(data, loc: Loc, path: Path | None, values: dict) -> None:
    """Refuse, in the free-text fields (TEXT_KEYS, at any depth), characters that are no text:
    control characters but tab and line feed (NUL, ESC, CR, DEL, C1), the line and paragraph
    separators U+2028/U+2029, and bidirectional overrides. YAML escapes ("\\0", "\\e", "\\L")
    make them; in a report or a terminal they hide or forge what is shown."""
    if isinstance(data, dict):
        for key, value in data.items():
            _check_free_text(value, loc + (key,), path, values)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _check_free_text(value, loc + (i,), path, values)
    elif isinstance(data, str) and loc and loc[-1] in TEXT_KEYS:
        bad = next((ch for ch in data if ord(ch) in _BIDI or ch not in "\t\n" and
                    unicodedata.category(ch) in ("Cc", "Zl", "Zp")), None)
        if bad is not None:
            line, col = values.get(loc, (None, None))
            raise ClaimError(path, line, col, dotted(loc), f"character U+{ord(bad):04X} "
                             f"({printable(bad)}) is not allowed in free text; write plain text")


def _check_name(path: Path) -> None:
    """A claim's name, its file name without the extension, names its report folder
    (reports/NAME/): refuse one that is not a plain folder name ('..' from '...yaml')."""
    name = path.stem
    if not name or name.startswith(".") or printable(name) != name:
        raise ClaimError(path, None, None, "", f"the claim's name {name!r} (its file name without "
                         "the extension) names its report folder, so it must not be empty, start "
                         "with '.' or hold control characters; rename the file")



# --- pydantic errors → ClaimError ---------------------------------------------------------------

def _validate(data: dict, path: Path | None, values: dict, keys: dict, overridden: list[Loc] = ()) -> Claim:
    try:
        claim = Claim.model_validate(data)
    except ValidationError as exc:
        raw = exc.errors(include_url=False)
        # a list whose items failed is also "too short" (its valid items are none): say the cause
        raw = [e for e in raw if e["type"] != "too_short" or not any(
            o is not e and tuple(o["loc"])[:len(e["loc"])] == tuple(e["loc"]) for o in raw)] or raw
        errors = [_convert(e, data, path, values, keys, overridden) for e in raw]
        errors.sort(key=lambda e: (e.line is None, e.line or 0, e.col or 0))  # first in the file first
        first = errors[0]
        if len(errors) > 1:
            first.msg += f" (+{len(errors) - 1} more)"
        raise first from None
    claim._path, claim._values, claim._keys = path, values, keys
    return claim


_TAGGED = {"edits": (EDIT_METHODS, "optimal"), "heuristic": (HEURISTICS, "manual")}


def _strip_tags(loc: Loc, data) -> Loc:
    """pydantic puts the chosen union member's tag into `loc` ('edits', 0, 'optimal', 'tau');
    the YAML has no such level, so drop it."""
    out, node = [], data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part not in node and \
                any(part in registry for registry, _ in _TAGGED.values()):
            continue
        out.append(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(out)


def _convert(err: dict, data, path: Path | None, values: dict, keys: dict, overridden) -> ClaimError:
    loc = _strip_tags(tuple(err["loc"]) + tuple((err.get("ctx") or {}).get("at", ())), data)
    kind, msg = err["type"], err["msg"].removeprefix("Value error, ")
    if kind in ("union_tag_invalid", "union_tag_not_found"):   # an unknown `method:`
        registry, _ = _TAGGED[next(p for p in loc if p in _TAGGED)]
        tag = (err.get("ctx") or {}).get("tag")
        loc, msg = loc + ("method",), f"unknown method {tag!r}; expected one of: {', '.join(registry)}"
        line, col = _lookup(values, loc)
    elif loc and loc[-1] == "[key]":  # a bad dict key: point at the key itself
        loc = loc[:-1]
        line, col = _lookup(keys, loc)
    elif kind == "extra_forbidden":
        msg = _unknown_key(loc, data)
        line, col = _lookup(keys, loc)
    elif kind == "missing":
        msg = "missing required key"
        line, col = _lookup(keys, loc[:-1]) if loc[:-1] in keys else _lookup(values, loc)
    else:
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = "expected a mapping (key: value lines)"
        if kind != "claim" and not kind.startswith("value_error"):
            msg += f", got {_kind(err['input'])}"
        line, col = _lookup(values, loc)
    if any(loc[: len(o)] == o for o in overridden):  # the bad value came from an override, not the file
        line, col, msg = None, None, msg + " (set by an override)"
    return ClaimError(path, line, col, dotted(loc), msg)


def _section_at(loc: Loc, data) -> Any:
    """The pydantic section class at `loc` (tags stripped), following `method:` choices."""
    model: Any = Claim
    node = data
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        node = node.get(part) if isinstance(node, dict) else None
        if model is Claim and part in _TAGGED:
            registry, default = _TAGGED[part]
            if part == "edits":   # a list: the next part is the item's index
                index = parts.pop(0) if parts else None
                node = node[index] if isinstance(node, list) and isinstance(index, int) and index < len(node) else None
            method = node.get("method", default) if isinstance(node, dict) else default
            model = registry[method].section if method in registry else None
        else:
            field = getattr(model, "model_fields", {}).get(part)
            model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    return model


def _unknown_key(loc: Loc, data) -> str:
    model = _section_at(loc[:-1], data)   # the section that rejected the key
    names = list(getattr(model, "model_fields", ()))
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "expected one of: " + ", ".join(names)
    renamed = {   # keys of loccheck 0.1.0 claim files
        "edit": "edit methods are now a list, `edits: [{method: optimal, ...}]`",
        "heads": "the claimed sites are now `sites: [L12H3, ...]`",
        "epochs": "edits now train until they converge; `max_epochs` caps them",
        "max_steps": "edits now train until they converge; `max_epochs` caps them",
        "full_model_learning_rate": "the whole model's rate is now `ceiling_learning_rate`",
        "lr_size_exponent": "the whole model's rate is now `ceiling_learning_rate`, which no claim's "
                            "size changes, so every claim on a model shares one ceiling"}
    if loc[-1] in renamed:
        hint = renamed[loc[-1]]
    return f"unknown key {loc[-1]!r}; {hint}"


def _kind(value: object) -> str:
    """How a YAML reader would name a value in a message."""
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- dotted keys -----------------------------------------------------------------------------------

_KEY = re.compile(r"[^.\[\]]+(\[[0-9]+\])*(\.[^.\[\]]+(\[[0-9]+\])*)*")
_PART = re.compile(r"([^.\[\]]+)|\[([0-9]+)\]")


def _parse_key(key: str) -> Loc:
    """'edits[0].tau' → ('edits', 0, 'tau')."""
    if _KEY.fullmatch(key) is None:
        raise ValueError(f"`key` must look like 'edits[0].learning_rate' or 'location.sites[1]', got {key!r}")
    return tuple(m[1] if m[1] is not None else int(m[2]) for m in _PART.finditer(key))


def _lookup(positions: dict[Loc, Pos], loc: Loc) -> tuple[int | None, int | None]:
    for n in range(len(loc), -1, -1):  # fall back to the nearest parent present in the file
        if loc[:n] in positions:
            return positions[loc[:n]]
    return None, None
