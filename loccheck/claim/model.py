"""The `Claim`: every section validated together (pydantic, frozen), with the YAML positions it was
read from, so any later error names file:line:col; pydantic's errors converted to one ClaimError."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, Field, PrivateAttr, ValidationError, model_validator

from loccheck.claim.keys import KeyPath, Pos, dotted, lookup, parse_key
from loccheck.claim.sections import (TESTS, VERDICT_TESTS, BehaviorSpec, EditSection, GenerationSpec, HeuristicSection,
                                     LocationSpec, ModelSpec, NecessitySpec, DEFAULT_N_NECESSITY, RandomLocationsSpec, SideEffectsSpec,
                                     EvidenceSpec, SizeCurveSpec, StabilitySpec, VerdictSpec, metric_name, one_sentence, test_name)
from loccheck.edits import EDIT_METHODS
from loccheck.errors import ClaimError
from loccheck.heuristics import HEURISTICS
from loccheck.locations import RESIDUAL_KINDS
from loccheck.metrics import METRICS
from loccheck.schema import Section, fail


Verdicts = Literal["SUPPORTED", "SPECIFIC", "SPECIFIC_BUT_WEAK", "FALSIFIED", "NO_EFFECT", "UNDERPOWERED"]


class Claim(Section):
    claim: Annotated[str, AfterValidator(one_sentence)] = Field(description="The claim, in one sentence.")
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
    metrics: tuple[Annotated[str, AfterValidator(metric_name)], ...] = Field(
        ("preference_margin", "preference_accuracy"),
        description="Metrics reported for every edit (the verdict's metric is always computed); "
                    f"one of: {', '.join(METRICS)}.")
    side_effects: SideEffectsSpec = Field(default_factory=SideEffectsSpec,
                                          description="Texts the side-effect metrics are measured on.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec,
                                       description="Generated answers and their judge (generation metrics).")
    random_locations: RandomLocationsSpec = Field(default_factory=RandomLocationsSpec, description="The null.")
    verdict: VerdictSpec = Field(default_factory=VerdictSpec, description="Test and thresholds of the verdict.")
    tests: tuple[Annotated[str, AfterValidator(test_name)], ...] = Field(
        ("editing",), min_length=1,
        description="The tests the claim must pass: " + "; ".join(f"'{k}', {v}" for k, v in TESTS.items())
                    + ". The verdict is SUPPORTED only if every listed test with a verdict (editing, "
                      "necessity) supports it; their p-values share alpha by Holm's method.")
    necessity: NecessitySpec | None = Field(
        None, description="The necessity test's settings (tests: [..., necessity]; its defaults when absent).")
    size_curve: SizeCurveSpec | None = Field(
        None, description="Random locations at several sizes, to say how many random sites the claim is worth "
                          "(fits at every size: opt-in).")
    stability: StabilitySpec = Field(default_factory=StabilitySpec,
                                     description="How stable the claim's heuristic selection is under "
                                                 "resampling of its train questions (reported beside the verdict).")
    evidence: EvidenceSpec = Field(default_factory=EvidenceSpec,
                                   description="Where this claim's evidence bundle lives, and whether the pytest "
                                               "plugin replays it.")
    # checked in `_check_expect`: a union here would name its members in an error's field
    expect: Any = Field(
        None, description="Verdict this claim file is expected to get (checked by the pytest plugin): one of "
                          f"{', '.join(get_args(Verdicts))}, or one per listed test with a verdict "
                          "({editing: FALSIFIED, necessity: SUPPORTED}).")

    _path: Path | None = PrivateAttr(None)
    _values: dict[KeyPath, Pos] = PrivateAttr(default_factory=dict)  # where each value starts
    _keys: dict[KeyPath, Pos] = PrivateAttr(default_factory=dict)  # where each mapping key starts

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
        elif kind is not None and self.location.kind != kind:
            raise fail(f"heuristic {self.heuristic.method!r} proposes {kind} sites, but the location "
                       f"holds {self.location.kind} sites", ("heuristic", "method"))
        self._check_tests()
        draw = self.random_locations.draw
        if draw == "haar" and self.site_kind not in RESIDUAL_KINDS:
            raise fail(f"a Haar draw is a random subspace of the residual stream; the claim's "
                       f"{self.site_kind} sites are drawn as sites", ("random_locations", "draw"))
        if self.stability.bootstrap:
            why = bootstrap_refusal(self)
            if why:
                raise fail(why, ("stability", "bootstrap"))
        if draw == "every" and self.site_kind == "subspace":
            raise fail("draw: every fits every location of the claim's shape once, but a subspace's are a "
                       "continuum: use draw: haar", ("random_locations", "draw"))
        if draw == "sites" and self.site_kind == "subspace":
            raise fail("a subspace has no sites to draw: its null is random subspaces of its dimension "
                       "(draw: haar)", ("random_locations", "draw"))
        return self

    def _check_tests(self) -> None:
        from loccheck.ablations import unsupported

        seen: dict[str, int] = {}
        for i, name in enumerate(self.tests):
            if name in seen:
                raise fail(f"test {name!r} is listed twice (also tests[{seen[name]}])", ("tests", i))
            seen[name] = i
        if "editing" not in self.tests:
            raise fail("tests must list editing: the other tests are reported beside it (the ceiling, the "
                       "null and the report rest on the editing test)", ("tests",))
        if "without" in self.tests and self.edits[0].method != "optimal":
            raise fail(f"the test 'without' fits the optimal whole-model edit without the location; "
                       f"edits[0] is {self.edits[0].method!r}", ("tests", seen["without"]))
        if "minimality" in self.tests:
            size = (getattr(self.heuristic, "top_k", None) if self.location.from_heuristic else
                    len(self.location.sites) or len(self.location.latents))
            if self.site_kind == "subspace":
                raise fail("minimality leaves out one site at a time; a subspace's basis vectors are not "
                           "sites (its orthonormalised rows depend on their order)", ("tests", seen["minimality"]))
            if size is not None and size < 2:
                raise fail("minimality leaves out one site at a time and needs a location of at least 2 "
                           "sites", ("tests", seen["minimality"]))
        if self.necessity is not None and "necessity" not in self.tests:
            raise fail("necessity settings are given but tests does not list necessity", ("necessity",))
        if "necessity" in self.tests and self.necessity is None:     # its defaults, filled in
            object.__setattr__(self, "necessity", NecessitySpec())
        if self.necessity is not None and self.random_locations.draw == "every":
            if self.necessity.n is not None:
                raise fail(f"necessity.n is not given with random_locations.draw: every: the necessity null is "
                           f"every other location too, got n: {self.necessity.n}; leave it out", ("necessity", "n"))
        elif self.necessity is not None and self.necessity.n is None:
            object.__setattr__(self.necessity, "n", DEFAULT_N_NECESSITY)
        if "necessity" in self.tests and self.site_kind is not None:
            why = unsupported(self.necessity.ablation, self.site_kind)
            if why:
                raise fail(why, ("necessity", "ablation"))
        self._check_expect()

    def _check_expect(self) -> None:
        verdicts = get_args(Verdicts)
        if self.expect is None or isinstance(self.expect, str) and self.expect in verdicts:
            return
        if not isinstance(self.expect, dict):
            got = describe_value(self.expect)
            raise fail(f"expect must be one of {', '.join(verdicts)}, or a mapping of listed tests to "
                       f"verdicts, got {got}", ("expect",))
        if not self.expect:
            raise fail("expect is an empty mapping; name a verdict for a listed test, or leave expect out",
                       ("expect",))
        for name, verdict in self.expect.items():
            if verdict not in verdicts:
                raise fail(f"expected verdict must be one of {', '.join(verdicts)}, got {describe_value(verdict)}",
                           ("expect", name))
        if isinstance(self.expect, dict):
            for name in self.expect:
                if name not in VERDICT_TESTS or name not in self.tests:
                    listed = [t for t in self.tests if t in VERDICT_TESTS]
                    raise fail(f"expect names test {name!r}, which gives no verdict here; the listed tests "
                               f"with a verdict: {', '.join(listed)}", ("expect", name))

    @property
    def necessity_behavior(self) -> str:
        """Which answer of a pair the behaviour the necessity test removes prefers: "chosen", or
        "rejected" (`necessity.behavior`; auto: rejected for known facts' counterfactual pairs)."""
        chosen = self.necessity.behavior if self.necessity is not None else "auto"
        if chosen == "auto":
            return "rejected" if self.behavior.dataset == "known_facts" else "chosen"
        return chosen

    @property
    def verdict_tests(self) -> tuple[str, ...]:
        """The listed tests that give a verdict, in claim order."""
        return tuple(t for t in self.tests if t in VERDICT_TESTS)

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def name(self) -> str:
        return self._path.stem if self._path is not None else "claim"

    @property
    def site_kind(self) -> str:
        """The kind of the claimed sites (from the heuristic when it picks them)."""
        return self.location.kind or HEURISTICS[self.heuristic.method].kind

    @property
    def null_draw(self) -> str:
        """How the null's locations are drawn: "sites", "haar" or "every" (`random_locations.draw`)."""
        return self.random_locations.draw or ("haar" if self.site_kind == "subspace" else "sites")

    def null_size(self, test: str, n_locations: int | None) -> int:
        """How many locations the `test`'s null ("editing" or "necessity") has: with draw: every,
        every one of the `n_locations` but the claim's; else the claim's n."""
        if self.null_draw == "every":
            return n_locations - 1
        return self.necessity.n if test == "necessity" else self.random_locations.n

    @property
    def all_metrics(self) -> tuple[str, ...]:
        """The listed metrics, with the verdict's first when it is not among them."""
        listed = tuple(self.metrics)
        return listed if self.verdict.metric in listed else (self.verdict.metric, *listed)

    def error(self, key: str | KeyPath, msg: str) -> ClaimError:
        """A ClaimError at `key` ('location.sites[3]' or ('location', 'sites', 3)), located at
        its value in the YAML, or at the nearest parent present there."""
        loc = parse_key(key) if isinstance(key, str) else tuple(key)
        line, col = lookup(self._values, loc)
        return ClaimError(self._path, line, col, dotted(loc), msg)

    def with_overrides(self, updates: dict[str, object]) -> "Claim":
        """A new validated Claim with dotted keys replaced ({'random_locations.n': 5}).
        Values must already have their YAML types (ints, not '5')."""
        data = self.model_dump(mode="json")  # lists, not tuples, so items can be replaced
        for key, value in updates.items():
            *parents, last = parse_key(key)
            node: Any = data
            try:
                for part in parents:
                    node = node[part]
                node[last]  # the key must already exist: the dump holds every field
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"`updates` key {key!r} is not a claim field") from None
            node[last] = value
        overridden = [parse_key(k) for k in updates]
        return validate_claim(data, self._path, self._values, self._keys, overridden)

    @property
    def evidence_bundle(self) -> Path | None:
        """evidence.bundle, relative to the claim file's folder (None when it names none)."""
        bundle = self.evidence.bundle
        if bundle is None:
            return None
        return Path(bundle) if self._path is None else self._path.parent / bundle

    def effective_config(self) -> dict:
        """Every field, defaults filled in, as JSON-ready data (for reports and cache keys)."""
        return self.model_dump(mode="json")


def bootstrap_refusal(claim: Claim) -> str | None:
    """Why the claim's heuristic selection cannot be resampled (None when it can)."""
    method = claim.heuristic.method
    if HEURISTICS[method].run is None:
        ranking = ", ".join(n for n, h in HEURISTICS.items() if h.run is not None)
        return (f"heuristic {method!r} selects nothing, so there is no selection to resample; claim "
                f"stability needs a heuristic that ranks sites ({ranking})")
    if claim.site_kind == "subspace":
        return ("the heuristic proposes a subspace, not a set of sites, so there is no site to count as "
                "selected again")
    return None


def claim_json_schema() -> dict:
    """JSON schema of claim files, with field descriptions, for editors."""
    return Claim.model_json_schema()


def validate_claim(data: dict, path: Path | None, values: dict, keys: dict, overridden: list[KeyPath] = ()) -> Claim:
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


def _strip_tags(loc: KeyPath, data) -> KeyPath:
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
        line, col = lookup(values, loc)
    elif loc and loc[-1] == "[key]":  # a bad dict key: point at the key itself
        loc = loc[:-1]
        line, col = lookup(keys, loc)
    elif kind == "extra_forbidden":
        msg = _unknown_key(loc, data)
        line, col = lookup(keys, loc)
    elif kind == "missing":
        msg = "missing required key"
        line, col = lookup(keys, loc[:-1]) if loc[:-1] in keys else lookup(values, loc)
    else:
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = "expected a mapping (key: value lines)"
        if kind != "claim" and not kind.startswith("value_error"):
            msg += f", got {describe_value(err['input'])}"
        line, col = lookup(values, loc)
    if any(loc[: len(o)] == o for o in overridden):  # the bad value came from an override, not the file
        line, col, msg = None, None, msg + " (set by an override)"
    return ClaimError(path, line, col, dotted(loc), msg)


def _section_at(loc: KeyPath, data) -> Any:
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


def _unknown_key(loc: KeyPath, data) -> str:
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


def describe_value(value: object) -> str:
    """How a YAML reader would name a value in a message."""
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
