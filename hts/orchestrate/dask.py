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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from hts.errors import ClusterError, HtsError

__all__ = ["dask_client", "map_fields", "default_workers"]

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


def map_fields(
    fn: Callable[..., R],
    items: Iterable[T],
    *,
    client: Any,
    args: tuple = (),
    max_in_flight: int | None = None,
) -> Iterator[tuple[T, R]]:
    """Run ``fn(item, *args)`` for every item; yield ``(item, result)`` as tasks finish.

    With ``client=None`` the calls run in order in this process. Errors raised by
    a task propagate here; an :class:`HtsError` keeps its one-line message.
    Task keys are deterministic per item, so Dask never runs the same item twice
    concurrently.
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
        fut = client.submit(fn, item, *args, pure=False)
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
