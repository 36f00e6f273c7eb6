"""Head locations: `L{layer}H{head}`, 0-based, is the one user-facing spelling."""
from __future__ import annotations

import re
from dataclasses import dataclass

_HEAD_RE = re.compile(r"L(\d+)H(\d+)")


@dataclass(frozen=True, order=True)
class HeadLoc:
    layer: int
    head: int

    @classmethod
    def parse(cls, text: str) -> "HeadLoc":
        m = _HEAD_RE.fullmatch(text.strip()) if isinstance(text, str) else None
        if m is None:
            raise ValueError(f"a head must look like 'L12H3' (0-based layer and head), got {text!r}")
        return cls(int(m[1]), int(m[2]))

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"


def format_heads(heads) -> list[str]:
    """Canonical, sorted spelling of a set of heads."""
    return [str(h) for h in sorted(heads)]
