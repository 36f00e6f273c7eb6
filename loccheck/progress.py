"""Progress for long runs: one bar over the edits and one over the steps of the current edit,
on stderr, only when stderr is a terminal (CI logs and pytest output stay clean)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, n_edits: int, enabled: bool | None = None):
        from tqdm.auto import tqdm

        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._tqdm = tqdm
        self.start = time.monotonic()
        self.outer = tqdm(total=n_edits, desc="edits", unit="edit", disable=not self.enabled,
                          position=0, dynamic_ncols=True)
        self.inner = None

    def begin_edit(self, label: str, n_steps: int) -> None:
        self.inner = self._tqdm(total=n_steps, desc=label, unit="step", leave=False,
                                disable=not self.enabled, position=1, dynamic_ncols=True)

    def step(self, step: int, n_steps: int, loss: float | None = None) -> None:
        if self.inner is not None:
            if loss is not None:
                self.inner.set_postfix(loss=f"{loss:.3g}", refresh=False)
            self.inner.update(1)

    def end_edit(self, label: str, gain: float, final_loss: float | None = None,
                 still_falling: bool = False) -> None:
        if self.inner is not None:
            self.inner.close()
        self.outer.update(1)
        if self.enabled:
            done, total = self.outer.n, self.outer.total
            elapsed = time.monotonic() - self.start
            left = elapsed / done * (total - done)
            loss = "" if final_loss is None else f"loss {final_loss:.3g}, "
            flag = "STILL FALLING, " if still_falling else ""
            self.outer.write(f"[{done}/{total}] {label}: {loss}{flag}gain {gain:+.3g}"
                             f"  ({elapsed:.0f} s so far, ~{left:.0f} s left)")

    def cached(self, label: str, gain: float) -> None:
        self.outer.update(1)
        if self.enabled:
            self.outer.write(f"[{self.outer.n}/{self.outer.total}] {label}: from the cache, "
                             f"gain {gain:+.3g}")

    def close(self) -> None:
        self.outer.close()
