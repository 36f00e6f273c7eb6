"""A model the researcher already has loaded: `loccheck.verify(claim, model=m, tokenizer=t)`.

The model is used as it is, on its device and in its dtype (the claim's `model.device` and
`model.dtype` do not apply, and its `model.name` is only the run's label: nothing is opened
under it). It is identified by what it holds rather than by its files: a sha256 over its
state dict's tensors, its config and its tokenizer (`given_identity`), computed once per run,
so a fit is served from the cache only to exactly the same weights. `left_as_found` gives the
model back as it came, also when the run fails: loccheck edits through hooks and never writes
a weight, and the flags it sets (eval mode, frozen parameters) are put back.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from loccheck.errors import LoccheckError

PASSED_IN = "passed in"
ATTENTION = ("eager", "sdpa")   # the implementations that take loccheck's 4-D additive masks


@dataclass
class GivenModel:
    """A passed-in model and tokenizer, checked: what `inspect_claim` reads from a `ModelSource`
    (config, tokenizer, adapter) and what `prepare_testbed` gets instead of loading weights."""
    model: object
    tokenizer: object
    label: str                      # the claim's model.name: a label only
    _adapter: object = None
    _identity: dict | None = field(default=None, repr=False)

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> str:
        return str(_one_device(self.model))

    @property
    def dtype(self) -> str:
        return str(_main_dtype(self.model)).removeprefix("torch.")

    @property
    def facts(self) -> str:
        """"LlamaForCausalLM, float32, cpu"."""
        return f"{type(self.model).__name__}, {self.dtype}, {self.device}"

    @property
    def summary(self) -> str:
        """"passed in (LlamaForCausalLM, float32, cpu)"."""
        return f"{PASSED_IN} ({self.facts})"

    def adapter(self):
        """The model's adapter and its checks (`loading._check_adapter`), once."""
        from loccheck.models import loading

        if self._adapter is None:
            try:
                self._adapter = loading._check_adapter(self.model, f"passed-in {type(self.model).__name__}")
            except LoccheckError as err:    # about the model passed, not the claim's model.name
                raise type(err)(err.msg, key="model") from None
        return self._adapter

    @property
    def identity(self) -> dict:
        """`given_identity` of the model and tokenizer, computed on first use (once per run)."""
        if self._identity is None:
            self._identity = given_identity(self.model, self.tokenizer)
        return self._identity

    def loaded(self):
        """The model as a `LoadedModel`, untouched: no move, no cast (`left_as_found` sets its
        eval mode and frozen parameters for the run)."""
        from loccheck.models.loading import LoadedModel

        ident = self.identity
        info = {"name": self.label, "resolved": PASSED_IN, "source": self.summary,
                "revision": None, "sha256": ident["sha256"], "commit": None,
                "weights_sha256": ident["weights"], "config_sha256": ident["config"],
                "tokenizer_sha256": ident["tokenizer"],
                "name_or_path": getattr(self.config, "_name_or_path", None) or None,
                "attn_implementation": ident["attn_implementation"],
                "class": type(self.model).__name__, "device": self.device, "dtype": self.dtype}
        return LoadedModel(self.model, self.tokenizer, info, self.adapter())


def given_model(model, tokenizer, label: str) -> GivenModel:
    """Check a passed-in model and tokenizer (one-line LoccheckError for a model loccheck cannot
    read or run; TypeError for an argument that is no model). The tokenizer is used as it is,
    except that one without a pad token is copied and given its eos token as pad (what loccheck
    does to a tokenizer it loads), so the caller's object is not changed."""
    import torch

    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"`model` must be a transformers causal LM (a torch.nn.Module with a "
                        f"config), got {type(model).__name__}")
    if tokenizer is None or not callable(tokenizer):
        raise TypeError(f"`tokenizer` must be the model's tokenizer when `model` is given, "
                        f"got {type(tokenizer).__name__}")
    check_given_model(model)
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token = tokenizer.eos_token
    return GivenModel(model, tokenizer, label)


def check_given_model(model) -> None:
    """The weights must be in memory, on one device, in plain floating-point tensors, and the
    attention must take a 4-D additive mask; else one line naming the reason."""
    what = type(model).__name__
    offloaded = _offloaded(model)
    if offloaded:
        raise LoccheckError(f"the passed-in {what} is offloaded by accelerate (hf_device_map puts "
                            f"{offloaded} on {_offload_places(model)}); loccheck needs every weight in "
                            "memory on one device: load it without offloading (device_map=None or one device)",
                            key="model")
    tensors = [*model.named_parameters(), *model.named_buffers()]
    if not any(True for _ in model.parameters()):
        raise LoccheckError(f"the passed-in {what} has no parameters", key="model")
    meta = [n for n, t in tensors if t.is_meta]
    if meta:
        raise LoccheckError(f"the passed-in {what} has {len(meta)} tensors without data (on the meta "
                            f"device, e.g. {meta[0]!r}): its weights were never loaded, so they can "
                            "neither be hashed nor run; pass a model whose weights are in memory", key="model")
    quant = _quantization(model)
    if quant:
        raise LoccheckError(f"the passed-in {what} holds quantised weights ({quant}), which loccheck "
                            "cannot hash or edit; load it unquantised (e.g. dtype=torch.bfloat16)",
                            key="model")
    devices = sorted({str(t.device) for _, t in tensors})
    if len(devices) > 1:
        raise LoccheckError(f"the passed-in {what}'s weights lie on several devices ({', '.join(devices)}); "
                            "loccheck runs a model on one device: load or move it onto one", key="model")
    attn = attn_implementation(model)
    if attn not in ATTENTION:
        raise LoccheckError(f"the passed-in {what} uses attn_implementation {attn!r}, which does not "
                            "take the 4-D additive attention masks loccheck passes; load it with "
                            "attn_implementation=\"sdpa\" or \"eager\"", key="model")


def attn_implementation(model) -> str:
    value = getattr(model.config, "_attn_implementation", None)
    return "eager" if value is None else str(value)


def _offloaded(model) -> str:
    """The modules accelerate's device map keeps on disk, or on the CPU beside accelerator
    ones ("" when none): their parameters are placeholders that hooks fill during forward.
    A map that puts everything on the CPU is no offload."""
    places = {m or "<model>": str(d) for m, d in (getattr(model, "hf_device_map", None) or {}).items()}
    elsewhere = any(d not in ("disk", "cpu") for d in places.values())
    off = [m for m, d in places.items() if d == "disk" or (d == "cpu" and elsewhere)]
    return f"{len(off)} modules (e.g. {off[0]!r})" if off else ""


def _offload_places(model) -> str:
    places = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    return " and ".join(sorted(places & {"disk", "cpu"}))


def _quantization(model) -> str:
    """What makes the weights other than plain floating-point tensors ("" when nothing): a
    quantizer transformers attached (a GGUF checkpoint dequantised at load is plain), or a
    parameter that is not a float tensor (bitsandbytes' Params4bit, Int8Params)."""
    import torch

    quantizer = getattr(model, "hf_quantizer", None)
    config = getattr(quantizer, "quantization_config", None) or getattr(model.config, "quantization_config", None)
    if quantizer is not None or config is not None:
        def field_(key):
            return config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        method = field_("quant_method")
        method = str(getattr(method, "value", method) or type(quantizer).__name__)
        if not (method == "gguf" and field_("dequantize")):
            return method
    for name, p in model.named_parameters():
        if type(p) is not torch.nn.Parameter or not p.dtype.is_floating_point:
            return f"{name!r} is a {type(p).__name__} of {str(p.dtype).removeprefix('torch.')}"
    return ""


def _one_device(model):
    return next(iter(model.parameters())).device


def _main_dtype(model):
    """The dtype most of the parameters' elements have (norms may be kept in float32)."""
    counts: dict = {}
    for p in model.parameters():
        counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get)


def given_identity(model, tokenizer) -> dict:
    """What identifies a passed-in model for the fit cache, each part a sha256:

    - `weights`: over the state dict's tensors in order, each as its name, dtype, shape and the
      sha256 of its bytes (a tensor tied to an earlier one is hashed once);
    - `config`: `config.to_dict()` as sorted JSON, less the keys that name where it came from
      (`_name_or_path`, `_commit_hash`, `transformers_version`, which the code identity covers);
    - `tokenizer`: the files `save_pretrained` writes (vocabulary, merges, normaliser, special
      tokens, chat template), names and bytes: one scheme for every tokenizer backend;
    - `attn_implementation`, which changes the numbers in the last bits;
    - `sha256`: over all of the above, what `LoadedModel.weights_id` is for this model."""
    parts = {"weights": state_dict_sha256(model), "config": config_sha256(model.config),
             "tokenizer": tokenizer_sha256(tokenizer), "attn_implementation": attn_implementation(model)}
    whole = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {**parts, "sha256": whole}


def state_dict_sha256(model, workers: int | None = None) -> str:
    """sha256 over (name, dtype, shape, sha256 of the bytes) of every state-dict tensor, in
    state-dict order. Tensors are hashed on `workers` threads (hashlib lets go of the GIL),
    one at a time per thread, copied to the CPU first when they live elsewhere."""
    from concurrent.futures import ThreadPoolExecutor

    state = model.state_dict(keep_vars=True)
    first: dict = {}          # storage identity -> the first name that holds it
    todo = []
    for name, t in state.items():
        same = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()), t.device)
        if t.numel() and same in first:
            continue
        first.setdefault(same, name)
        todo.append(name)
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        digests = dict(zip(todo, pool.map(lambda n: _tensor_sha256(state[n]), todo)))
    h = hashlib.sha256()
    for name, t in state.items():
        same = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()), t.device)
        digest = digests.get(name) or digests[first[same]]
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0{digest}\n".encode())
    return h.hexdigest()


def _tensor_sha256(t) -> str:
    import torch

    with torch.no_grad():
        flat = t.detach().reshape(-1)
        if flat.device.type != "cpu":
            flat = flat.cpu()
        raw = flat.contiguous().view(torch.uint8).numpy()   # (numel * itemsize,) bytes
    return hashlib.sha256(memoryview(raw)).hexdigest()


_CONFIG_PROVENANCE = ("_name_or_path", "_commit_hash", "transformers_version")


def config_sha256(config) -> str:
    data = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_PROVENANCE}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    """sha256 over the files the tokenizer saves (relative names and bytes)."""
    from loccheck.models.loading import folder_sha256, quiet_transformers

    with tempfile.TemporaryDirectory(prefix="loccheck-tokenizer-") as tmp:
        try:
            with quiet_transformers():
                tokenizer.save_pretrained(tmp)
        except Exception as err:   # tokenizers of custom code raise anything
            raise LoccheckError(f"cannot identify the passed-in tokenizer ({type(tokenizer).__name__}): "
                                f"save_pretrained failed: {type(err).__name__}: {err}".splitlines()[0],
                                key="tokenizer") from None
        return folder_sha256(Path(tmp))


_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
          "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
          "_backward_pre_hooks")


@contextlib.contextmanager
def left_as_found(model):
    """Inside: `model` in eval mode with every parameter frozen (how loccheck runs a model).
    On the way out, also on an error: every parameter's `requires_grad`, every module's
    `training` flag and every module's hooks (forward, pre-forward, backward) as they were
    on the way in, so a hook left behind by a failed run is removed too. Weights are not
    copied: loccheck edits through hooks and never writes one (`tests/run/test_given_model.py`
    checks the state dict bit for bit)."""
    grads = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    hooks = [(m, {h: dict(getattr(m, h)) for h in _HOOKS if isinstance(getattr(m, h, None), dict)})
             for m in model.modules()]
    try:
        model.eval().requires_grad_(False)
        yield model
    finally:
        for m, saved in hooks:
            for h, before in saved.items():
                now = getattr(m, h)
                if list(now.items()) != list(before.items()):
                    now.clear()
                    now.update(before)
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)
