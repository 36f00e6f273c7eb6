"""Edit methods: what is fitted at a location, at the whole model (the ceiling) and at every
random location (a registry).

An edit method is one module in this folder holding its claim section (`method: <name>` in a
claim's `edits:` list), its edit, its fit and its ceiling, registered as an `EditMethod`:

- `settings(section, verdict_metric=, site_kind=, ceiling=)`: the method's `EditSettings`,
  built from its claim section, that determine one fit at a location of sites of `site_kind`
  (`ceiling`: the whole model's fit), the same procedure for every location, whatever its
  size; this one typed object is what `fit` receives; its JSON and the location make the
  fit's cache key, so two claims that fit the same edit share it;
- `fit(testbed, settings, location, on_step=None)`: a `Fitted` edit; `location` None is the whole
  model; `on_step(step, n_steps, loss)` reports progress while it runs; a method with
  `continues_ceiling` also takes `start=(settings, location, state)`, a fitted location's edit
  to continue the ceiling from (it lies in the ceiling's family);
- `restore(testbed, settings, location, state)`: the same edit from its stored parameters, so a
  metric added later scores it without refitting;
- `initial(testbed, settings, location)`: the edit before fitting, which must be the identity
  (the model's outputs bit for bit; tests/*/test_*_contracts.py checks every registered method).

An edit object has `attached(model)` (a context manager: the model is edited inside it and
bit-identical after it), `on_batch` (None, or the scoring hook a position-dependent edit
needs), `n_params`, and `state()`: its parameters as float32 numpy arrays.

Modules here import torch inside their functions, so the claim schema (and with it the pytest
plugin) can read the sections without loading torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from loccheck.registry import Registry
from loccheck.schema import Section


@dataclass(frozen=True)
class EditSettings:
    """What determines one fit of a method (each method's own frozen dataclass, built from its
    claim section by `EditMethod.settings`)."""

    def to_json(self) -> dict:
        """The settings as JSON-ready data: part of the fit's cache key and of its record."""
        return dataclasses.asdict(self)

    def numerics(self) -> tuple[str, ...]:
        """The components of `loccheck.numerics`, beyond the method's own and the testbed's, whose
        code these settings make the fit's numbers depend on (their versions join its key)."""
        return ()


@dataclass
class Fitted:
    edit: Any                                        # attachable, with state() and n_params
    info: dict = field(default_factory=dict)         # method-specific facts for the record (JSON)


@dataclass(frozen=True)
class EditMethod:
    name: str
    section: type[Section]
    settings: Callable[..., EditSettings]
    fit: Callable[..., Fitted]
    restore: Callable[..., Any]
    initial: Callable[..., Any]
    description: str = ""
    uses_validation: bool = False                    # its fit reads the validation pairs
    site_kinds: tuple[str, ...] = ("head",)          # the kinds of location it can edit
    datasets: tuple[str, ...] | None = None          # the behaviour datasets it can read (None: any)
    continues_ceiling: bool = False                  # its ceiling is an optimum, continued from any
                                                     # location's edit that fits better
    report_lines: Callable[[dict], list[str]] | None = None      # its report section, from result.json
    report_figures: Callable[[dict, Path], None] | None = None   # draws its figures into the report folder
    cannot_edit: Callable[[Any], str | None] | None = None       # why it cannot edit a model (its adapter), or None


EDIT_METHODS: Registry[EditMethod] = Registry("edit method")


def register_edit_method(method: EditMethod) -> EditMethod:
    return EDIT_METHODS.register(method.name, method)


from loccheck.edits import iti, optimal, rome  # noqa: E402,F401  (register the built-ins)
