"""Fan work out over Dask.

``scheduler`` selects where tasks run:

- ``"local"`` (default): a ``distributed.LocalCluster`` sized to the machine,
  one single-threaded worker process per core;
- ``"threads"``: a LocalCluster of threads inside this process (cheap to start;
  good for I/O-bound ingest of small plates and for tests);
- ``"sync"``: no Dask, tasks run one after another in this process (debugging);
- ``"tcp://host:port"`` (any address): an existing Dask cluster.

:func:`map_fields` submits tasks with a bounded number in flight, so the client
never holds more than a window of results, and yields results as they complete.

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

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from hts.errors import ClusterError, HtsError

__all__ = ["dask_client", "map_fields", "default_workers", "gpu_resources", "is_external", "worker_name"]

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


@contextmanager
def dask_client(scheduler: str | None = None, *, workers: int | None = None, gpu: bool = False) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (None for ``"sync"``), closed on exit.

    With ``gpu=True`` a local cluster has one worker per GPU: dask-cuda's
    ``LocalCUDACluster`` when installed (it pins each worker to its device),
    else one single-threaded worker process per device.
    """
    scheduler = scheduler or "local"
    if scheduler == "sync":
        yield None
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


def _local_cluster(scheduler: str, *, workers: int | None, gpu: bool) -> Any:
    from distributed import LocalCluster

    quiet = {"dashboard_address": None, "silence_logs": logging.ERROR}
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
    workers = client.scheduler_info(n_workers=-1).get("workers", {}) if _takes_n_workers(client) else client.scheduler_info().get("workers", {})
    if any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values()):
        return {"GPU": 1}
    logging.getLogger(__name__).warning(
        "CUDA tasks on %s: no worker advertises a GPU resource (start GPU workers with --resources GPU=1); "
        "tasks run on any worker", scheduler,
    )
    return None


def _takes_n_workers(client: Any) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def map_fields(
    fn: Callable[..., R],
    items: Iterable[T],
    *,
    client: Any,
    args: tuple = (),
    max_in_flight: int | None = None,
    resources: dict[str, float] | None = None,
) -> Iterator[tuple[T, R]]:
    """Run ``fn(item, *args)`` for every item; yield ``(item, result)`` as tasks finish.

    With ``client=None`` the calls run in order in this process. Errors raised by
    a task propagate here; an :class:`HtsError` keeps its one-line message.
    ``resources`` (e.g. ``{"GPU": 1}``) restricts tasks to workers with those
    resources (ignored without a client).
    """
    items = list(items)
    if client is None:
        for item in items:
            yield item, fn(item, *args)
        return
    from distributed import as_completed

    n_workers = max(1, len(client.scheduler_info().get("workers", {})) or 1)
    window = max_in_flight or max(4, 3 * n_workers)
    it = iter(items)
    futures: dict[Any, T] = {}

    def submit_next() -> bool:
        try:
            item = next(it)
        except StopIteration:
            return False
        fut = client.submit(fn, item, *args, pure=False, **({"resources": resources} if resources else {}))
        futures[fut] = item
        return True

    for _ in range(window):
        if not submit_next():
            break
    ac = as_completed(list(futures))
    try:
        for fut in ac:
            item = futures.pop(fut)
            try:
                result = fut.result()
            except HtsError:
                raise
            except Exception as e:
                raise ClusterError(f"task for {item} failed on a worker: {type(e).__name__}: {e}") from e
            finally:
                fut.release()
            if submit_next():
                ac.add(list(futures)[-1])
            yield item, result
    finally:
        for fut in futures:
            fut.cancel()
