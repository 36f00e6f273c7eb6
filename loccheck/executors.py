"""Where jobs run. An `Executor` maps a job runner over jobs and yields each outcome as it
arrives, with the job's position, so a caller can show progress in completion order and still
assemble results in job order (reports stay deterministic). The serial executor, in this
process, is the default and the reference every other executor must agree with."""
from __future__ import annotations

from typing import Callable, Iterator, Protocol, Sequence, TypeVar

from loccheck.errors import LoccheckError

J = TypeVar("J")
R = TypeVar("R")


class Executor(Protocol):
    name: str
    width: int            # how many jobs run at once

    def imap(self, fn: Callable[[J], R], jobs: Sequence[J]) -> Iterator[tuple[int, R]]: ...


class SerialExecutor:
    name, width = "serial", 1

    def imap(self, fn, jobs):
        for i, job in enumerate(jobs):
            yield i, fn(job)


EXECUTORS = {"serial": SerialExecutor}


def get_executor(executor: "str | Executor") -> Executor:
    if not isinstance(executor, str):
        return executor
    if executor not in EXECUTORS:
        raise LoccheckError(f"unknown executor {executor!r}; expected one of: {', '.join(EXECUTORS)}",
                            key="executor")
    return EXECUTORS[executor]()
