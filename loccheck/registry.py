"""A small validating registry (the peft idea): one per extensible concept (edit methods,
heuristics, metrics, site kinds). Names are the claim files' spellings, so they are checked
once here: lower case, snake_case, registered once."""
from __future__ import annotations

import re
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")
_NAME = re.compile(r"[a-z][a-z0-9_]*")


class Registry(Generic[T]):
    def __init__(self, what: str):
        self.what = what                  # "edit method", used in messages
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            raise ValueError(f"`name` of a {self.what} must be lower-case snake_case, got {name!r}")
        if name in self._items:
            raise KeyError(f"{self.what} {name!r} is already registered")
        self._items[name] = item
        return item

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.what} {name!r}; registered: {', '.join(self)}") from None

    def get(self, name: object, default: T | None = None) -> T | None:
        return self._items.get(name, default) if isinstance(name, str) else default

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._items[name]) for name in self]
