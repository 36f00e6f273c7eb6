"""Where jobs run. An `Executor` maps a job runner over jobs and yields each outcome as it
arrives, with the job's position, so a caller can show progress in completion order and still
assemble results in job order (reports stay deterministic). The serial executor, in this
process, is the default and the reference every other executor must agree with.

`RayExecutor` (`--executor ray`, the `loccheck[ray]` extra; Ray is imported only when it is
used) fits jobs on a Ray cluster: one actor per worker slot (a GPU, a fraction of one, or some
CPUs) loads the model once and fits the jobs it is given. The shared cache is the record of
progress: every finished fit is stored by the worker that made it, so a run killed midway
resumes with only the missing fits.
"""
from __future__ import annotations

import os
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


class RayExecutor:
    """Jobs on a Ray cluster: `address` (else $RAY_ADDRESS, else a local cluster started here).

    Each worker is an actor holding `gpus_per_worker` GPUs (default: 1 when the cluster has
    GPUs, else 0) and `cpus_per_worker` CPUs (its torch threads); `workers` of them (default:
    as many as the cluster holds). A request the cluster can never meet fails at once."""
    name = "ray"

    def __init__(self, address: str | None = None, *, workers: int | None = None,
                 cpus_per_worker: float = 1, gpus_per_worker: float | None = None):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if self.address is not None:
            _check_reachable(self.address, "--ray-address" if address else "$RAY_ADDRESS")
        self.cpus_per_worker, self.gpus_per_worker = cpus_per_worker, gpus_per_worker
        self._workers, self._actors, self._runner = workers, [], None
        self._resources_checked = False

    @property
    def width(self) -> int:
        self._connect()
        return self._workers

    def _connect(self) -> None:
        if self._resources_checked:
            return
        try:
            import ray
        except ImportError:
            raise LoccheckError("--executor ray needs Ray: pip install 'loccheck[ray]'", key="executor") from None
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = self.address or "a local cluster"
                raise LoccheckError(f"cannot start or join Ray at {where}: {err}", key="executor") from None
        total = ray.cluster_resources()
        cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
        if self.gpus_per_worker is None:
            self.gpus_per_worker = 1 if gpus >= 1 else 0
        fits = [cpus // self.cpus_per_worker if self.cpus_per_worker else float("inf"),
                gpus // self.gpus_per_worker if self.gpus_per_worker else float("inf")]
        most = int(min(fits))
        if most < 1:
            raise LoccheckError(
                f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs, so no worker of "
                f"{self.cpus_per_worker:g} CPUs and {self.gpus_per_worker:g} GPUs fits in it", key="executor")
        if self._workers is None:
            self._workers = most
        elif self._workers > most:
            raise LoccheckError(f"{self._workers} Ray workers of {self.cpus_per_worker:g} CPUs and "
                                f"{self.gpus_per_worker:g} GPUs need more than the cluster's {cpus:g} "
                                f"CPUs and {gpus:g} GPUs (at most {most})", key="executor")
        self._resources_checked = True

    def _pool(self, runner) -> list:
        """The actors for `runner` (one testbed each); a new runner (another claim) gets new ones."""
        import ray

        if self._runner is not runner:
            self.shutdown()
            worker = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker)(_Worker)
            self._actors = [worker.options(name=f"loccheck-worker-{i}").remote(runner, self.cpus_per_worker)
                            for i in range(self.width)]
            self._runner = runner
        return self._actors

    def imap(self, fn, jobs):
        import ray

        actors = self._pool(fn)
        pending, queue = {}, list(enumerate(jobs))
        idle = list(actors)
        while queue or pending:
            while queue and idle:
                i, job = queue.pop(0)
                actor = idle.pop(0)
                pending[actor.fit.remote(job)] = (i, job, actor)
            done, _ = ray.wait(list(pending), num_returns=1)
            i, job, actor = pending.pop(done[0])
            yield i, self._result(done[0], job)
            idle.append(actor)

    def _result(self, ref, job):
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(ref)
        except RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, LoccheckError):
                raise cause from None
            raise
        except RayActorError as err:
            self.shutdown()
            raise LoccheckError(f"a Ray worker died while fitting {job.label} ({type(err).__name__}); "
                                "every fit it finished is in the cache: run again to fit only the "
                                "missing ones", key="executor") from None

    def shutdown(self) -> None:
        if self._actors:
            import ray

            for actor in self._actors:
                ray.kill(actor)
        self._actors, self._runner = [], None


def _check_reachable(address: str, source: str, timeout: float = 3.0) -> None:
    """A Ray address ("host:port", "ray://host:port") must accept a TCP connection within
    `timeout` seconds: ray.init retries an address where nothing listens for minutes. "auto"
    and "local" are Ray's own words and left to it."""
    import socket

    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.removeprefix("[").removesuffix("]")            # [::1]:6379
    if not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise LoccheckError(f"{source} {address!r}: not host:port with a port from 1 to 65535 "
                            "(or ray://host:port, auto, local)", key="executor")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        why = f"no answer within {timeout:g} s" if isinstance(err, TimeoutError) else err.strerror or str(err)
        raise LoccheckError(f"{source} {address!r}: nothing accepts connections there ({why}); start "
                            "the cluster (`ray start --head`) or fix the address", key="executor") from None


class _Worker:
    """One Ray actor: a job runner with a testbed of its own (the model loaded once per worker)."""

    def __init__(self, runner, threads: float):
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.runner = runner

    def fit(self, job):
        return self.runner(job)


EXECUTORS = {"serial": SerialExecutor, "ray": RayExecutor}


def get_executor(executor: "str | Executor", **options) -> Executor:
    """An executor by name (`options` go to its constructor), or the one given."""
    if not isinstance(executor, str):
        return executor
    if executor not in EXECUTORS:
        raise LoccheckError(f"unknown executor {executor!r}; expected one of: {', '.join(EXECUTORS)}",
                            key="executor")
    return EXECUTORS[executor](**options)
