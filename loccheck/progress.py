"""Progress of a verification, driven by the outcomes as they arrive.

Three modes: "bar" (tqdm bars on a terminal: one over the edits, one over the steps of the
edit being fitted), "lines" (one plain line per finished edit, for CI logs and captured
output, where a bar would show nothing), and "off"."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable


def progress_mode(progress: bool | str | None) -> str:
    """None: a bar on a terminal, plain lines elsewhere; True: a bar; False: off."""
    if isinstance(progress, str):
        if progress not in ("bar", "lines", "off"):
            raise ValueError(f"`progress` must be 'bar', 'lines' or 'off', got {progress!r}")
        return progress
    if progress is None:
        return "bar" if sys.stderr.isatty() else "lines"
    return "bar" if progress else "off"


def _stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Phases:
    """One line when a phase of a verification starts (what it does, on how much) and one when
    it ends (how long it took), in every mode but "off": a CI log, where no bar shows, sees
    what a long run is doing."""

    def __init__(self, mode: str, write: Callable[[str], None] | None = None, title: str = ""):
        self.mode, self.title = mode, title
        self._write = write or _stderr_line

    @contextlib.contextmanager
    def __call__(self, what: str, announce: bool = True):
        """`announce` False: only the end line (a phase that refuses bad input then prints
        nothing but its one-line error)."""
        if self.mode == "off":
            yield
            return
        if announce:
            self._write(f"loccheck: {self.title}{what} ...")
        began = time.monotonic()
        yield
        self._write(f"loccheck: {self.title}{what}: done in {time.monotonic() - began:.1f} s")

    def note(self, text: str) -> None:
        """A line within a phase (not in mode "off")."""
        if self.mode != "off":
            self._write(f"loccheck: {self.title}{text}")


class Progress:
    def __init__(self, n_jobs: int, mode: str = "lines", *, metric: str, base: float,
                 write: Callable[[str], None] | None = None, title: str = ""):
        self.mode, self.total, self.done = mode, n_jobs, 0
        self.metric, self.base, self.title = metric, base, title
        self.start = time.monotonic()
        self._write = write or _stderr_line
        self.outer = self.inner = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self._tqdm = tqdm
            self.outer = tqdm(total=n_jobs, desc="edits", unit="edit", position=0, dynamic_ncols=True)

    LINE_EVERY = 60.0    # seconds between the lines of one long fit, where no bar shows

    def on_step(self, step: int, n_steps: int, loss: float | None = None) -> None:
        """A training step (or an alpha tried) of the edit being fitted in this process. In
        "lines" mode a fit that runs long says where it is once a minute: a CI log of a
        big model's run is not silent for hours."""
        if self.mode == "lines":
            now = time.monotonic()
            if step == 1:
                self._last_line = now
            elif now - getattr(self, "_last_line", now) >= self.LINE_EVERY:
                self._last_line = now
                tail = f", loss {loss:.3g}" if loss is not None else ""
                self._write(f"loccheck: {self.title}[{self.done + 1}/{self.total}] fitting: step {step} "
                            f"of at most {n_steps}{tail}")
        if self.mode != "bar":
            return
        if self.inner is None or step == 1:
            if self.inner is not None:
                self.inner.close()
            self.inner = self._tqdm(total=n_steps, desc="steps", unit="step", leave=False,
                                    position=1, dynamic_ncols=True)
        if loss is not None:
            self.inner.set_postfix(loss=f"{loss:.3g}", refresh=False)
        self.inner.update(1)

    def finished(self, outcome) -> None:
        self.done += 1
        if self.inner is not None:
            self.inner.close()
            self.inner = None
        if self.mode == "off":
            return
        elapsed = time.monotonic() - self.start
        left = elapsed / self.done * (self.total - self.done)
        how = f"fitted in {outcome.seconds:.0f} s" if outcome.fitted else "from the cache"
        if outcome.n_scored and not outcome.fitted:
            how += f", {outcome.n_scored} metric(s) scored"
        info, facts = outcome.info, ""
        if info.get("final_objective") is not None:
            facts = (f", objective {info['initial_objective']:.3g} -> {info['final_objective']:.3g} "
                     f"in {info['epochs']} epoch(s), " + ("converged" if info.get("converged") else
                                                          f"NOT CONVERGED ({info.get('stopped')})"))
        gain = outcome.metrics[self.metric] - self.base
        line = (f"{self.title}[{self.done}/{self.total}] {outcome.job.label}: {how}{facts}, "
                f"{self.metric} gain {gain:+.3g}  ({elapsed:.0f} s so far, ~{left:.0f} s left)")
        if self.outer is not None:
            self.outer.update(1)
            self.outer.write(line)
        else:
            self._write(f"loccheck: {line}")

    def more(self, n: int = 1) -> None:
        """n more edits than planned (a continued ceiling)."""
        self.total += n
        if self.outer is not None:
            self.outer.total += n
            self.outer.refresh()

    def note(self, text: str) -> None:
        if self.mode == "off":
            return
        line = f"{self.title}{text}"
        if self.outer is not None:
            self.outer.write(line)
        else:
            self._write(f"loccheck: {line}")

    def close(self) -> None:
        for bar in (self.inner, self.outer):
            if bar is not None:
                bar.close()
