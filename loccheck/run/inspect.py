"""Every check a claim's inputs get before any weights load: its data read and split, its model's
files, config and tokenizer opened, the location against the model, the tokenized splits
against its context, the edit settings, the judge. `loccheck verify a.yaml b.yaml` inspects
every claim before it fits anything, so bad input in b never costs a's fitting."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loccheck.errors import DataError, LoccheckError


def check_location_size(claim, adapter, residual: "Residual | None" = None) -> None:
    """The claimed location must lie inside the model and leave room for a null."""
    kind = claim.site_kind
    if kind == "subspace":            # its dimension was checked against the width when read
        return
    try:
        n_sites = len(residual.sites(kind, adapter) if residual is not None else adapter.sites(kind))
    except LoccheckError as err:
        raise claim.error("location.sites" if claim.location.sites else "heuristic.method", err.msg) from None
    if claim.location.sites:
        for i, site in enumerate(claim.location.parsed):
            try:
                adapter.check_inside([site])
            except LoccheckError as err:
                raise claim.error(f"location.sites[{claim.location.sites.index(str(site))}]", err.msg) from None
    top_k = getattr(claim.heuristic, "top_k", None) if claim.location.from_heuristic else None
    size = top_k or len(claim.location.sites) or len(claim.location.latents)
    if size >= n_sites:
        key = "heuristic.top_k" if top_k else "location.latents" if claim.location.latents else "location.sites"
        raise claim.error(key, f"the location would be every {kind} site of the model ({size}); "
                          "there is no random location of the same size to compare with")


def check_size_curve(claim, adapter, residual: "Residual | None" = None) -> None:
    """Each size of the size curve leaves room for more than one random location: below the
    number of sites of the claim's kind (a subspace's dimension below the stream's width)."""
    if claim.size_curve is None:
        return
    kind = claim.site_kind
    if kind == "subspace":
        limit = adapter.model_width
        what = f"the width of the residual stream ({limit})"
    else:
        limit = len(residual.sites(kind, adapter) if residual is not None else adapter.sites(kind))
        what = f"the model's {limit} {kind} sites"
    for i, size in enumerate(claim.size_curve.sizes):
        if size >= limit:
            raise claim.error(f"size_curve.sizes[{i}]", f"size {size} is not below {what}: random "
                              "locations of that size would be the whole model")


@dataclass
class ClaimInputs:
    """What a claim's fits need, read and checked before any weights load: the data, the
    model's files, config and tokenizer, the location against the model, the tokenized splits
    against its context. `loccheck verify a.yaml b.yaml` inspects every claim before it fits
    anything, so bad input in b never costs a's fitting."""
    claim: Any
    data: Any                          # data.BehaviorData
    source: Any                        # models.loading.ModelSource, or models.given.GivenModel
    prompt_format: str
    splits: dict                       # split name -> tokenized pairs
    device: str
    dtype: str
    side: tuple | None = None          # tokenized side-effect texts, when a metric needs them
    side_identity: dict | None = None
    residual: "Residual | None" = None  # a residual-stream location's basis or dictionary


@dataclass
class Residual:
    """What a location in the residual stream is made of, read before any weights load: a
    subspace's basis file (`bases`, by the basis id its `SubspaceLoc` names), or the sparse
    autoencoder whose latents the claim names (`dictionary`)."""
    location: tuple = ()                             # the claimed location, when the claim names one
    bases: dict = field(default_factory=dict)        # basis id -> (k, width) orthonormal rows
    dictionary: Any = None                           # data.bases.Dictionary
    dictionary_layer: int | None = None
    identity: dict | None = None                     # what the fits depend on beyond their locations

    def sites(self, kind: str, adapter) -> tuple:
        """Every site of `kind` the null can draw: a dictionary's latents, else the model's."""
        if kind == "latent":
            from loccheck.locations import LatentLoc

            return tuple(LatentLoc(self.dictionary_layer, i) for i in range(self.dictionary.n_latents))
        return adapter.sites(kind)

    def basis_of(self, location, width: int):
        """(k, width) orthonormal rows spanning a residual-stream location."""
        import numpy as np
        from loccheck.stats.null import haar_basis

        site = location[0]
        if site.kind == "latent":
            return self.dictionary.basis([s.latent for s in location], field="location.latents")
        if site.basis.startswith("without:"):          # the orthogonal complement of a location
            from dataclasses import replace
            from scipy.linalg import null_space

            inner = site.basis.removeprefix("without:")
            rows = (self.dictionary.basis([int(i) for i in inner.removeprefix("latents:").split(",")],
                                          field="location.latents") if inner.startswith("latents:") else
                    self.basis_of((replace(site, dim=width - site.dim, basis=inner),), width))
            return null_space(rows).T
        if site.basis == "identity":
            return np.eye(width)
        if site.basis.startswith("haar:"):
            _, seed, draw = site.basis.split(":")
            return haar_basis(width, site.dim, int(seed), int(draw))
        if site.basis not in self.bases:
            raise LoccheckError(f"the basis of {site} was not read: name its file under location.subspace",
                                key="location.subspace")
        return self.bases[site.basis]


def basis_id(file_sha256: str, key: str | None) -> str:
    """The id a basis read from a file goes by in its `SubspaceLoc`: the file's sha256, or with
    a key (one of several arrays in the file) the sha256 of "<file sha256>/<key>"."""
    import hashlib

    return "sha256:" + (file_sha256 if key is None else
                        hashlib.sha256(f"{file_sha256}/{key}".encode()).hexdigest())


def read_residual(claim, adapter) -> Residual | None:
    """A subspace's basis or an SAE's dictionary, read and checked against the model (its
    layers, its width) and the claim's sha256; None for a location of other sites."""
    from loccheck.data.bases import read_basis, read_dictionary
    from loccheck.locations import SubspaceLoc

    loc = claim.location
    spec = loc.subspace or loc.dictionary
    if spec is None:
        return None
    name = "subspace" if loc.subspace is not None else "dictionary"
    if spec.layer >= adapter.n_layers:
        raise claim.error(f"location.{name}.layer", f"layer {spec.layer} is outside the model: it has "
                          f"{adapter.n_layers} layers (0-based)")
    base_dir = claim.path.parent if claim.path is not None else None
    field_ = f"location.{name}." + ("basis" if name == "subspace" else "path")
    try:
        read = read_basis if name == "subspace" else read_dictionary
        got = read(getattr(spec, "basis", None) or getattr(spec, "path", None), key=spec.key,
                   width=adapter.model_width, field=field_, base_dir=base_dir)
        if spec.sha256 is not None and got.sha256 != spec.sha256:
            raise LoccheckError(f"{got.path} has sha256 {got.sha256}, not the {spec.sha256} the claim "
                                "names: the file changed since the claim was written",
                                key=f"location.{name}.sha256")
        if name == "dictionary":
            got.basis(loc.latents, field="location.latents")      # indices inside, rows independent
    except LoccheckError as err:
        raise claim.error(err.key or field_, err.msg) from None
    if name == "subspace":
        site = SubspaceLoc(spec.layer, got.dim, basis_id(got.sha256, spec.key))
        return Residual((site,), {site.basis: got.vectors})      # its location names it: no identity
    return Residual(loc.parsed, dictionary=got, dictionary_layer=spec.layer,
                    identity={"dictionary": {"sha256": got.sha256, "key": spec.key, "layer": spec.layer,
                                             "hook": spec.hook}})


def inspect_claim(claim, cache_root: Path, given=None) -> ClaimInputs:
    """Load the claim's data, open its model (not the weights), check the location, tokenize.
    `given`: a passed-in model (`models.given.GivenModel`), used instead of the claim's
    model.name, on its own device and in its own dtype (model.device and model.dtype do not
    apply); its errors are about the model passed, not the claim file."""
    from loccheck.models.loading import open_model, resolve_device, resolve_dtype
    from loccheck.data.prompts import resolve_format

    ms, bs = claim.model, claim.behavior
    data = load_claim_data(claim)            # data first: a bad data path fails before a model is opened
    if given is not None:
        source, device, dtype = given, given.device, given.dtype
        adapter = source.adapter()
    else:
        try:
            device = resolve_device(ms.device)
            dtype = str(resolve_dtype(ms.dtype, device)).removeprefix("torch.")
            source = open_model(ms.name, revision=ms.revision, trust_remote_code=ms.trust_remote_code,
                                cache=cache_root)
            adapter = source.adapter()
        except LoccheckError as err:
            raise claim.error(err.key or "model.name", err.msg) from None
    residual = read_residual(claim, adapter)
    check_location_size(claim, adapter, residual)
    check_size_curve(claim, adapter, residual)
    _check_edit_settings(claim, adapter)
    try:
        fmt = ("text" if bs.dataset == "known_facts" and bs.prompt_format == "auto" else
               resolve_format(source.tokenizer, bs.prompt_format, bs.system_prompt))
    except DataError as err:
        raise claim.error(err.key or _data_key(claim), err.msg) from None
    splits = tokenized_splits(claim, data, source.tokenizer, fmt, model_context(source.config))
    side, side_identity = side_texts(claim, source.tokenizer, model_context(source.config), data)
    _check_judge(claim, cache_root)
    _check_generation_prompts(claim, data, source.tokenizer, fmt, model_context(source.config))
    return ClaimInputs(claim, data, source, fmt, splits, str(device), dtype, side, side_identity, residual)


def edit_settings(claim, section, at: int | None, *, site_kind: str, ceiling: bool = False):
    """`section`'s `EditSettings` (the claim's `edits[at]`; `at` None: a method's default
    section). A method may read a file for them; its error names the field: its own
    ("stats_path") under `edits[at]`, else the section itself."""
    from loccheck.edits import EDIT_METHODS

    try:
        return EDIT_METHODS[section.method].settings(section, verdict_metric=claim.verdict.metric,
                                                     site_kind=site_kind, ceiling=ceiling)
    except LoccheckError as err:
        where = f"edits[{at}]" if at is not None else "edits"
        raise claim.error(where + (f".{err.key}" if err.key and err.key != "edits" else ""), err.msg) from None


def _check_edit_settings(claim, adapter) -> None:
    """Each edit method can edit this model and its settings can be made, before any weights load."""
    from loccheck.edits import EDIT_METHODS

    for i, section in enumerate(claim.edits):
        refuse = EDIT_METHODS[section.method].cannot_edit
        why = refuse(adapter) if refuse is not None else None
        if why:
            raise claim.error(f"edits[{i}].method", why)
        edit_settings(claim, section, i, site_kind=claim.site_kind)


def _data_key(claim) -> str:
    return "behavior.path" if claim.behavior.path else "behavior.dataset"


def model_context(config) -> int | None:
    return getattr(config, "max_position_embeddings", None)


def load_claim_data(claim, keep=None, keep_rule: str = ""):
    from loccheck.data.behavior import load_behavior

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


def tokenized_splits(claim, data, tokenizer, fmt: str, context: int | None) -> dict:
    """The splits' pairs as token ids, each checked against the model's context."""
    from loccheck.edits import EDIT_METHODS
    from loccheck.data.prompts import tokenize_pairs

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


def _check_judge(claim, cache_root: Path) -> None:
    """A generation metric needs its judge; a missing one is found before anything is fitted."""
    from loccheck.metrics.judges import minilm_folder
    from loccheck.metrics import METRICS

    if not any(METRICS[m].needs == "generations" for m in claim.all_metrics):
        return
    g = claim.generation
    if g.judge == "openai":
        from loccheck.metrics.judges import check_base_url, make_judge

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


def side_texts(claim, tokenizer, context: int | None, data=None):
    """The side-effect texts, tokenized, if a listed metric needs them (else (None, None));
    none of them is one of `data`'s facts (a known-facts claim's own facts, every split)."""
    from loccheck.data.side_texts import load_side_texts
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
