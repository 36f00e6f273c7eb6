"""Sliding-window attention, for the masks loccheck builds itself (`scoring.packed_pairs`).

transformers builds each layer's mask from a 2-D padding mask, the window included, but returns
a 4-D mask it is given as it is: a custom mask must carry the window itself. transformers' rule
(masking_utils.sliding_window_overlay) is that a query at index q sees a causal key at index k
iff k > q - window; in a packed row indices are not positions, so the rule is applied to
position ids, which makes each answer token see what it sees in its own sequence.

Which layers have a window: with `config.layer_types`, the "sliding_attention" layers have
`config.sliding_window` (None: none) and the "full_attention" layers none; any other type
(chunked, linear, ...) is not supported. Without layer_types every layer has
`config.sliding_window`, if set (Mistral 4096 by default; Mixtral, Phi-3 and Starcoder2 None).
Layers that differ need one mask per layer type, which only a forward that takes a dict of masks
keyed by layer type accepts; for any other model pairs are not packed (`packable`)."""
from __future__ import annotations

import functools
import inspect
import re

FULL, SLIDING = "full_attention", "sliding_attention"

# how the forwards that take prepared masks (`generate` passes them) say so in transformers 5:
# `if not isinstance(causal_mask_mapping := attention_mask, dict):` (Qwen2, Qwen3, Gemma-2, -3, ...)
_TAKES_MAPPING = re.compile(r"isinstance\(\s*(?:\w+\s*:=\s*)?attention_mask\s*,\s*dict\s*\)")


def _text_config(config):
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def layer_windows(config) -> list[int | None]:
    """The sliding window of each decoder layer (None: the layer has none), as above.
    ValueError for a layer type other than full or sliding attention, or bidirectional attention."""
    config = _text_config(config)
    if getattr(config, "use_bidirectional_attention", False):
        raise ValueError("a model with bidirectional attention is not causal: its masks are not loccheck's")
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is None:
        return [window] * config.num_hidden_layers
    unknown = sorted(set(types) - {FULL, SLIDING})
    if unknown:
        raise ValueError(f"`layer_types` may hold {FULL!r} and {SLIDING!r} for a mask loccheck builds, "
                         f"got {', '.join(map(repr, unknown))}")
    return [window if t == SLIDING else None for t in types]


def takes_mask_per_layer_type(model) -> bool:
    """Whether the forward of `model`'s body accepts a dict {layer type: 4-D mask} as its
    attention mask (read from its source: a forward it cannot be read from does not)."""
    return _forward_takes_mapping(type(getattr(model, model.base_model_prefix)))


@functools.cache
def _forward_takes_mapping(cls) -> bool:
    try:
        source = inspect.getsource(inspect.unwrap(cls.forward))
    except (OSError, TypeError):
        return False
    return bool(_TAKES_MAPPING.search(source))


def mask_windows(model) -> int | None | dict[str, int | None]:
    """What a mask built for `model` must carry: the one window of every layer (None: none), or
    {layer type: window} when its layers differ, for a forward that takes one mask per layer type
    (`takes_mask_per_layer_type`). ValueError when neither describes the model."""
    config = _text_config(model.config)
    windows = layer_windows(config)
    if len(set(windows)) <= 1:
        return windows[0] if windows else None
    if not takes_mask_per_layer_type(model):
        raise ValueError(f"{type(model).__name__} mixes layers with sliding windows {sorted(set(windows), key=str)} "
                         "and its forward takes one mask for all of them")
    return {t: (config.sliding_window if t == SLIDING else None) for t in sorted(set(config.layer_types))}


def packable(model) -> bool:
    """Whether preference pairs can be packed for `model` (`scoring.packed_pairs`): one mask, or one
    per layer type, gives every layer its window. Where not, `scoring.pair_logprobs` scores them
    unpacked and `prefix.pair_prefix` freezes nothing."""
    try:
        mask_windows(model)
    except ValueError:
        return False
    return True


def windowed(allowed, positions, window: int | None):
    """`allowed` (batch, q, k) with keys at least `window` positions behind the query removed
    (`positions`: (batch, width) position ids); the same tensor when no key is that far behind."""
    if window is None or int(positions.max()) < window:
        return allowed
    behind = positions[:, None, :] > positions[:, :, None] - window     # (batch, q, k)
    return allowed & behind
