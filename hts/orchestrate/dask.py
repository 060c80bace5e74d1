"""Fan work out over Dask.

``scheduler`` selects where tasks run:

- ``"local"`` (default): a ``distributed.LocalCluster`` sized to the machine,
  one single-threaded worker process per core (for work its caller estimates
  small, such as the ingest of a few fields (:data:`SMALL_WORK_S`) or classic
  segmentation of a few dozen fields (:data:`SMALL_COMPUTE_S`), a pool of threads
  of this process, :class:`ThreadPool`, without Dask: worker processes, or even
  importing ``distributed``, would cost more than they save);
- ``"processes"``: always worker processes, whatever the estimate;
- ``"threads"``: a LocalCluster of threads inside this process (cheap to start;
  good for I/O-bound ingest of small plates and for tests);
- ``"sync"``: no Dask, tasks run one after another in this process (debugging);
- ``"tcp://host:port"`` (any address): an existing Dask cluster.

:func:`shared_client` keeps one client (and its local cluster) for every call in a
``with`` block: a notebook or script that ingests, segments and measures pays the
cluster's start and the workers' imports once instead of once per call.

:func:`map_fields` submits tasks with a bounded number in flight, so the client
never holds more than a window of results, and yields results as they complete.
Short items are grouped several to a task (:func:`items_per_task`), sized by the time
the finished tasks took: each Dask task costs the client and scheduler about 10 ms of
CPU, which on a small machine is taken from the workers.

Worker faults: a task whose worker dies (killed, machine lost) is rescheduled by
the Dask scheduler on the remaining workers; ``map_fields`` only sees the result
of the run that finished. Tasks are idempotent (a field's chunks and its Parquet
part are overwritten whole), so a half-done attempt on a lost worker leaves
nothing behind. A task that kills ``distributed.scheduler.allowed-failures`` + 1
workers (default 3) fails with ``KilledWorker``, reported as a :class:`ClusterError`.

GPU clusters: workers started with ``--resources GPU=1`` advertise a GPU; tasks
of a CUDA engine then request ``{"GPU": 1}`` (:func:`gpu_resources`) so they run
only there, one at a time per GPU, while CPU tasks run on any worker.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from hts.errors import ClusterError, HtsError

__all__ = [
    "dask_client",
    "shared_client",
    "ThreadPool",
    "map_fields",
    "items_per_task",
    "Batcher",
    "default_workers",
    "gpu_resources",
    "is_external",
    "worker_name",
]

LOCAL_SCHEDULERS = ("local", "processes", "threads", "sync")

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def cuda_devices() -> int:
    """Number of CUDA devices torch sees (0 without torch/CUDA)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - broken CUDA installs
        return 0


# (scheduler, workers, client) of the innermost shared_client block, if any
_SHARED: contextvars.ContextVar[tuple[str, int | None, Any] | None] = contextvars.ContextVar(
    "hts_shared_client", default=None
)


#: Work estimated under this many CPU seconds runs a ``"local"`` scheduler in a :class:`ThreadPool`
#: (:func:`dask_client`'s ``work_s``): starting worker processes and their imports costs
#: ~1.5 s on 2 cores, more than their parallelism wins back on I/O-bound work this small
#: (ingest of 32 fields of 2048²: 2.2 s in threads, 3.1-3.7 s in processes).
SMALL_WORK_S = 5.0

#: The same for CPU-bound field work whose kernels release the GIL (an engine's
#: :meth:`~hts.compute.segment.engines.Engine.cpu_seconds_per_megapixel`): on 2 cores, classic
#: segment + features ran 1.2-1.9 s faster in threads than in worker processes for 10-17 CPU-s of
#: work (64 x 512², 8 x 2048²) and as fast at ~60 (32 x 2048²): a field thread holds the GIL ~10 %
#: of its time, so threads cap near 10 cores' worth; below this estimate they lose little anywhere.
SMALL_COMPUTE_S = 30.0


@contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    gpu: bool = False,
    work_s: float | None = None,
    small_s: float = SMALL_WORK_S,
) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (None for ``"sync"``), closed on exit.

    With ``gpu=True`` a local cluster has one worker per GPU: dask-cuda's
    ``LocalCUDACluster`` when installed (it pins each worker to its device),
    else one single-threaded worker process per device. Inside a
    :func:`shared_client` block for the same scheduler (and worker count, when one is
    asked for), that block's client is used and left open. ``work_s``: the caller's
    estimate of the CPU seconds of the work; under ``small_s`` (:data:`SMALL_WORK_S` for
    I/O-bound work such as ingest, :data:`SMALL_COMPUTE_S` for GIL-releasing compute) a
    ``"local"`` scheduler yields a :class:`ThreadPool` of this process instead of a cluster
    (what :func:`map_fields` needs of a client, and no more).
    """
    scheduler = scheduler or "local"
    if scheduler == "sync":
        yield None
        return
    shared = _SHARED.get()
    if shared is not None and not gpu and shared[0] == scheduler and workers in (None, shared[1]):
        yield shared[2]
        return
    if scheduler == "local" and not gpu and work_s is not None and work_s < small_s:
        check_workers(workers)
        with ThreadPool(workers or default_workers()) as pool:
            yield pool
        return
    from distributed import Client

    local = scheduler in ("local", "processes", "threads")
    if local:
        cluster = _local_cluster(scheduler, workers=workers, gpu=gpu)
        client = Client(cluster)
    else:
        cluster = None
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"cannot reach Dask scheduler at {scheduler} ({e})") from None
        except ValueError as e:
            raise ClusterError(f"bad scheduler address {scheduler!r} ({e})") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class ThreadPool:
    """Threads of this process standing in for a Dask client where the work is small: the part of
    ``distributed.Client`` that :func:`map_fields` and the tasks' callers use (``submit``,
    ``scheduler_info``, ``close``), on :class:`concurrent.futures.ThreadPoolExecutor`.

    Written because even a threads-only ``LocalCluster`` needs ``distributed``, whose import alone
    took 0.87 s of a cold 8 x 2048² ingest's 3.5 s (profiled), and its event loop and scheduler
    share the cores with the fields (docs/benchmarks.md, *Where things stand*, sixth stop); the kernels
    release the GIL, so threads are what the work needs. Closing waits for the running tasks and cancels
    the queued ones, so nothing still writes to a store after the ``with`` block.
    """

    def __init__(self, threads: int):
        self.threads = max(1, int(threads))
        self._pool = cf.ThreadPoolExecutor(self.threads, thread_name_prefix="hts-field")

    def submit(self, fn: Callable[..., R], *args: Any, pure: bool = False, **_options: Any) -> cf.Future:
        """``fn(*args)`` on a pool thread (``pure`` and Dask's other options mean nothing here)."""
        return self._pool.submit(fn, *args)

    def scheduler_info(self) -> dict[str, Any]:
        return {"workers": {"threads": {"nthreads": self.threads}}}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ThreadPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Completed:
    """``distributed.as_completed`` for a :class:`ThreadPool`'s futures: iterate as they finish, ``add`` more."""

    def __init__(self, futures: Iterable[cf.Future]):
        self._pending = set(futures)

    def add(self, fut: cf.Future) -> None:
        self._pending.add(fut)

    def __iter__(self) -> Iterator[cf.Future]:
        while self._pending:
            # waits on an Event: Ctrl-C interrupts it
            done, _ = cf.wait(list(self._pending), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                self._pending.discard(fut)
                yield fut


def _as_completed(client: Any, futures: list[Any]) -> Any:
    if isinstance(client, ThreadPool):
        return _Completed(futures)
    from distributed import as_completed

    return as_completed(futures)


@contextmanager
def shared_client(scheduler: str | None = None, *, workers: int | None = None) -> Iterator[Any]:
    """One client for every hts call in the block that runs on ``scheduler``; closed at the end.

    Calls asking for another scheduler, another worker count or GPU workers start their
    own as before. ``"sync"`` has no client: the block changes nothing.
    """
    scheduler = scheduler or "local"
    with dask_client(scheduler, workers=workers) as client:
        token = _SHARED.set((scheduler, workers, client) if client is not None else None)
        try:
            yield client
        finally:
            _SHARED.reset(token)


# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, to hand freed memory back to the
# OS at once. For image work that is expensive: setting it freezes glibc's mmap threshold at
# 128 KiB, so every field-sized array (a 512x512 float32 plane is 1 MiB) is a fresh mmap whose
# pages fault in one by one, and the heap's top is trimmed after every free. The classic segment +
# measure kernels cost 0.59 CPU s per 512² field in such a worker against 0.28 in-process; with
# arrays up to 32 MiB from the heap and up to 64 MiB of free heap kept for the next field, 0.33
# (`python -m benchmarks field --workers`; docs/benchmarks.md, *Worker processes*).
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": 32 * 1024 * 1024, "MALLOC_TRIM_THRESHOLD_": 64 * 1024 * 1024}


def worker_environ() -> dict[str, Any]:
    """Environment for worker processes started here: Dask's defaults plus :data:`WORKER_ENV`."""
    import dask

    return {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_ENV}


def check_workers(workers: int | None) -> None:
    """A local cluster's worker count: 1 to this machine's cores (more only queue for the same cores)."""
    if workers is None:
        return
    cores = default_workers()
    if not 1 <= workers <= cores:
        raise ClusterError(
            f"--workers {workers}: this machine has {cores} core{'s' if cores > 1 else ''}; a local cluster takes 1 to "
            f"{cores} workers (pass --scheduler ADDRESS to use a bigger cluster)"
        )


def _local_cluster(scheduler: str, *, workers: int | None, gpu: bool) -> Any:
    import dask
    from distributed import LocalCluster

    check_workers(workers)

    # Only CRITICAL from Dask's own loggers: a worker whose heartbeat races the scheduler's
    # shutdown logs an ERROR with a traceback although nothing failed (seen at the end of an
    # ingest on a busy machine); failures that matter reach the client as task errors and are
    # reported by hts as one line.
    # a free port Dask picks (":0"): never the fixed 8787 another running hts command may hold
    quiet = {"dashboard_address": ":0", "silence_logs": logging.CRITICAL}
    # the nanny reads the environment for its worker process when it starts it, i.e. here
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
        if gpu and scheduler != "threads":
            n_gpu = cuda_devices()
            try:
                from dask_cuda import LocalCUDACluster

                return LocalCUDACluster(n_workers=workers or n_gpu or None, threads_per_worker=1, **quiet)
            except ImportError:
                return LocalCluster(n_workers=workers or max(1, n_gpu), threads_per_worker=1, processes=True, **quiet)
        n = workers or default_workers()
        if scheduler == "threads":
            return LocalCluster(n_workers=1, threads_per_worker=n, processes=False, **quiet)
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, **quiet)


def worker_name(_item: Any = None) -> str | None:
    """The name of the Dask worker running the calling task (None outside a worker): diagnostics, tests."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return None


def is_external(scheduler: str | None) -> bool:
    """An existing cluster given by address (not a cluster started here, not ``sync``)."""
    return bool(scheduler) and scheduler not in LOCAL_SCHEDULERS


def gpu_resources(client: Any, scheduler: str | None, *, gpu: bool) -> dict[str, float] | None:
    """``{"GPU": 1}`` for CUDA tasks on an external cluster whose workers advertise a ``GPU`` resource, else None.

    Local clusters are built with one worker per GPU already; an external cluster
    with no ``GPU``-tagged worker runs the tasks anywhere (with a warning) rather
    than waiting forever for a resource no worker has.
    """
    if not gpu or client is None or not is_external(scheduler):
        return None
    workers = (
        client.scheduler_info(n_workers=-1).get("workers", {})
        if _takes_n_workers(client)
        else client.scheduler_info().get("workers", {})
    )
    if any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values()):
        return {"GPU": 1}
    logging.getLogger(__name__).warning(
        "CUDA tasks on %s: no worker advertises a GPU resource (start GPU workers with --resources GPU=1); "
        "tasks run on any worker",
        scheduler,
    )
    return None


def _takes_n_workers(client: Any) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def items_per_task(
    n_items: int,
    n_workers: int,
    seconds_per_item: float | None,
    *,
    target_s: float = 1.0,
    min_tasks_per_worker: int = 4,
) -> int:
    """How many items one task runs: enough that a task lasts about ``target_s``, few enough
    that every worker still gets ``min_tasks_per_worker`` tasks (so that the last ones balance).

    A Dask task costs about 10 ms of client and scheduler CPU: on 2 cores, 384 tasks of 50 ms
    CPU took 38 % longer than their work, the same work as 96 tasks of 200 ms 13 % longer.
    Fields that take 0.1 s are worth grouping, fields that take seconds are not.
    ``seconds_per_item`` None: one item per task.
    """
    if not seconds_per_item or seconds_per_item <= 0:
        return 1
    by_cost = max(1, int(target_s / seconds_per_item))
    by_balance = max(1, n_items // (max(1, n_workers) * min_tasks_per_worker))
    return min(by_cost, by_balance)


def _run_items(fn: Callable[..., R], items: list[T], *args: Any) -> tuple[list[R], float]:
    """Worker task: ``fn(item, *args)`` for a group of items, in order; their results and the seconds taken.

    An unexpected error carries the item it failed on (``hts_item``) back to the client.
    """
    t0 = time.perf_counter()
    out = []
    for item in items:
        try:
            out.append(fn(item, *args))
        except HtsError:
            raise
        except Exception as e:
            with contextlib.suppress(AttributeError):  # an exception class with __slots__
                e.hts_item = item  # type: ignore[attr-defined]
            raise
    return out, time.perf_counter() - t0


def map_fields(
    fn: Callable[..., R],
    items: Iterable[T],
    *,
    client: Any,
    args: tuple = (),
    max_in_flight: int | None = None,
    resources: dict[str, float] | None = None,
    seconds_per_item: float | None = None,
) -> Iterator[tuple[T, R]]:
    """Run ``fn(item, *args)`` for every item; yield ``(item, result)`` as tasks finish.

    With ``client=None`` the calls run in order in this process. Errors raised by
    a task propagate here; an :class:`HtsError` keeps its one-line message.
    ``resources`` (e.g. ``{"GPU": 1}``) restricts tasks to workers with those
    resources (ignored without a client).

    Short items are grouped into tasks (:func:`items_per_task`), by the time the
    finished tasks took per item (the median of the last 16); ``seconds_per_item``,
    a first estimate, groups the first tasks too (without it they run one item each).
    Groups shrink as the work runs out, so the last tasks balance. A group's results
    are yielded together when its task ends.
    """
    items = list(items)
    if client is None:
        for item in items:
            try:
                res = fn(item, *args)
            except HtsError:
                raise
            except Exception as e:
                raise ClusterError(f"task for {item} failed: {type(e).__name__}: {e}") from e
            yield item, res
        return
    from statistics import median

    # task slots: worker processes times their threads
    workers = client.scheduler_info().get("workers", {})
    n_workers = max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
    window = max_in_flight or max(4, 3 * n_workers)
    estimate = seconds_per_item
    taken: list[float] = []  # seconds per item of finished tasks
    position = 0
    futures: dict[Any, list[T]] = {}

    def submit_next() -> Any:
        """Submit the next group; its future, or None when all are submitted."""
        nonlocal position
        if position >= len(items):
            return None
        k = items_per_task(len(items) - position, n_workers, estimate)
        group = items[position : position + k]
        position += k
        fut = client.submit(_run_items, fn, group, *args, pure=False, **({"resources": resources} if resources else {}))
        futures[fut] = group
        return fut

    for _ in range(window):
        if submit_next() is None:
            break
    ac = _as_completed(client, list(futures))
    try:
        for fut in ac:
            group = futures.pop(fut)
            try:
                results, seconds = fut.result()
            except HtsError:
                raise
            except Exception as e:
                what = getattr(e, "hts_item", group[0])
                raise ClusterError(f"task for {what} failed on a worker: {type(e).__name__}: {e}") from e
            finally:
                if hasattr(fut, "release"):  # a Dask future: let the cluster drop the result
                    fut.release()
            taken.append(seconds / len(group))
            estimate = median(taken[-16:])
            nxt = submit_next()
            if nxt is not None:
                ac.add(nxt)
            yield from zip(group, results)
    finally:
        for fut in futures:
            fut.cancel()


class Batcher:
    """Collects task results and hands them to ``flush`` in batches: every ``size`` results, or
    once ``seconds`` have passed since the last flush, and whatever is left on exit (also
    when interrupted).

    The client records finished fields in the catalog this way: each flush is one
    transaction (one connection, one bulk load) whose fixed cost would otherwise be paid
    per field. The interval stretches so that flushing takes at most ``max_share`` of the
    client's time (a flush that took 0.4 s waits 8 s for the next at 5 %): on a small
    machine the client shares the cores with the workers. A crash loses at most one
    interval of bookkeeping; those fields are done again on resume.
    """

    def __init__(
        self, flush: Callable[[list[Any]], None], *, size: int = 256, seconds: float = 2.0, max_share: float = 0.05
    ):
        self._flush, self.size, self.seconds, self.max_share = flush, size, seconds, max_share
        self._items: list[Any] = []
        self._last = time.monotonic()
        self._interval = seconds

    def add(self, item: Any) -> None:
        self._items.append(item)
        if len(self._items) >= self.size or time.monotonic() - self._last > self._interval:
            self.flush()

    def flush(self) -> None:
        items, self._items = self._items, []
        if items:
            t0 = time.monotonic()
            self._flush(items)
            self._interval = max(self.seconds, (time.monotonic() - t0) / self.max_share)
        self._last = time.monotonic()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.flush()
