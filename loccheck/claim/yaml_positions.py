"""Claim YAML read into plain data and a map of where each value and key starts.

Line numbers come from the YAML parser, not from pydantic: the YAML is composed once, the node
tree walked into `{path_tuple: (line, col)}` maps (1-based), and only then constructed, so the
walk can refuse what must never be constructed (Python tags, aliases that expand to millions
of values, lone surrogates). Every problem is a one-line ClaimError at file:line:col.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from loccheck.claim.keys import KeyPath, Pos, dotted
from loccheck.errors import ClaimError


def read_yaml(text: str, path: Path | None) -> tuple[object, dict[KeyPath, Pos], dict[KeyPath, Pos]]:
    """(data, where each value starts, where each mapping key starts)."""
    values: dict[KeyPath, Pos] = {}
    keys: dict[KeyPath, Pos] = {}
    loader = None
    try:
        loader = _Loader(text)  # the reader rejects control characters here
        root = loader.get_single_node()
        if root is None:
            raise ClaimError(path, None, None, "", "claim file is empty")
        _walk(root, (), values, keys, path, {})  # before constructing: it bounds what aliases expand to
        data = loader.construct_document(root)
    except RecursionError:   # the composer and constructor recurse once per level of nesting
        line = loader.get_mark().line + 1 if loader is not None else None
        raise ClaimError(path, line, None, "", "YAML nested too deeply (claims need a few levels)") from None
    except yaml.MarkedYAMLError as err:
        raise _yaml_error(err, path) from None
    except yaml.reader.ReaderError as err:
        msg = f"control character U+{err.character:04X} is not allowed in YAML"
        raise ClaimError(path, text[: err.position].count("\n") + 1, None, "", msg) from None
    except yaml.YAMLError as err:
        raise ClaimError(path, None, None, "", f"invalid YAML: {' '.join(str(err).split())}") from None
    except (ValueError, TypeError, AttributeError) as err:  # e.g. `!!int abc`, which PyYAML lets escape
        raise ClaimError(path, None, None, "", f"invalid YAML value: {' '.join(str(err).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, values, keys


# --------------------------------------------------------

# A claim has a few dozen values. More are refused while composing (a 1 MiB flow list would
# take seconds to compose) and, counting each alias in full, before constructing: aliases
# repeat their anchor's whole value, and merge keys (`<<: [*a, *a]`) copy it, so nine levels
# of ten make 10**9 values out of a few lines.
MAX_YAML_VALUES = 100_000


class _Loader(yaml.SafeLoader):
    """SafeLoader (no Python tags) that also reads '1e-4' as a float, as YAML 1.2 does, and
    stops composing past MAX_YAML_VALUES nodes."""

    def __init__(self, stream):
        super().__init__(stream)
        self.n_nodes = 0

    def compose_node(self, parent, index):
        self.n_nodes += 1
        if self.n_nodes > MAX_YAML_VALUES:
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_YAML_VALUES} YAML values; a "
                                              "claim needs a few dozen", self.peek_event().start_mark)
        return super().compose_node(parent, index)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))

_STR_TAG = "tag:yaml.org,2002:str"
_NOT_PLAIN = {f"tag:yaml.org,2002:{name}" for name in ("binary", "set", "omap", "pairs")}


def _walk(node: yaml.Node, loc: KeyPath, values: dict, keys: dict, path: Path | None, sizes: dict) -> int:
    """Record where each value starts; refuse non-string keys, duplicate keys, unknown tags,
    lone surrogates and aliases that expand too far. Return how many values `node` expands to,
    each alias counted in full; `sizes` memoises that per node (None while inside it)."""
    values[loc] = _pos(node)
    if id(node) in sizes:  # an alias: checked already; not descending keeps "billion laughs" linear
        if sizes[id(node)] is None:
            raise ClaimError(path, *values[loc], dotted(loc), "recursive YAML alias: the anchor's value "
                             "contains an alias of itself")
        return sizes[id(node)]
    sizes[id(node)] = None
    # refuse !!python/... before anything is constructed, and the safe tags that construct no
    # plain value: !!binary would make bytes that pydantic reads as text, !!set a set, ...
    if node.tag not in _Loader.yaml_constructors or node.tag in _NOT_PLAIN:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise ClaimError(path, *values[loc], dotted(loc), f"YAML tag {tag!r} is not allowed; use plain values")
    size = 1
    if isinstance(node, yaml.ScalarNode):
        _check_unicode(node, loc, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            size += _walk(item, loc + (i,), values, keys, path, sizes)
    elif isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:
            kloc = _record_key(knode, loc, keys, path)
            size += 1 + _walk(vnode, kloc, values, keys, path, sizes)
    if size > MAX_YAML_VALUES:
        raise ClaimError(path, *values[loc], dotted(loc), f"YAML aliases expand this value to more than "
                         f"{MAX_YAML_VALUES} values (each alias repeats its anchor's whole value); a "
                         "claim needs a few dozen")
    sizes[id(node)] = size
    return size


def _record_key(knode: yaml.Node, loc: KeyPath, keys: dict, path: Path | None) -> KeyPath:
    """The loc of a mapping key, recorded in `keys`; refuse non-string and duplicate keys."""
    kpos = _pos(knode)
    if not isinstance(knode, yaml.ScalarNode) or knode.tag not in (_STR_TAG, "tag:yaml.org,2002:merge"):
        kind = knode.tag.rsplit(":", 1)[-1]
        raise ClaimError(path, *kpos, dotted(loc), f"key {knode.value!r} is read as a {kind}, not a "
                         "string; quote it")
    _check_unicode(knode, loc, path)
    kloc = loc + (knode.value,)
    if kloc in keys:
        raise ClaimError(path, *kpos, dotted(kloc), f"duplicate key {knode.value!r} (first on line {keys[kloc][0]})")
    keys[kloc] = kpos
    return kloc


def _check_unicode(node: yaml.ScalarNode, loc: KeyPath, path: Path | None) -> None:
    # a "\ud800" escape yields a lone surrogate, which no tokenizer, file or terminal takes
    try:
        node.value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ClaimError(path, *_pos(node), dotted(loc), f"lone surrogate U+{ord(node.value[err.start]):04X} "
                         "(from an escape such as \"\\ud800\") is not text; write the character itself") from None


def _pos(node: yaml.Node) -> Pos:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _yaml_error(err: yaml.MarkedYAMLError, path: Path | None) -> ClaimError:
    mark = err.problem_mark or err.context_mark
    msg = err.problem or err.context or "invalid YAML"
    if err.context and err.problem and err.context_mark is not None:
        msg += f" ({err.context} at line {err.context_mark.line + 1})"
    msg = " ".join(msg.split())
    if isinstance(err, yaml.constructor.ConstructorError):
        msg += "; claim files may only use plain YAML values"
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
    return ClaimError(path, line, col, "", msg)
