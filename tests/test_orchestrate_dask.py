"""Orchestration helpers: result batching and the environment of local worker processes."""

from __future__ import annotations

import os
import threading
import time

import pytest

from hts.errors import ClusterError
from hts.orchestrate.dask import WORKER_ENV, Batcher, dask_client, items_per_task, map_fields


def test_batcher_flushes_by_size_and_on_exit_even_when_interrupted():
    seen: list[list[int]] = []
    with Batcher(seen.append, size=3, seconds=3600) as b:
        for i in range(7):
            b.add(i)
        assert seen == [[0, 1, 2], [3, 4, 5]]
    assert seen[-1] == [6]

    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        with Batcher(seen.append, size=100, seconds=3600) as b:
            b.add("done before Ctrl-C")
            raise KeyboardInterrupt
    assert seen == [["done before Ctrl-C"]]


def test_batcher_interval_stretches_with_the_cost_of_a_flush():
    calls: list[list[int]] = []

    def slow(items):
        calls.append(items)
        time.sleep(0.05)

    with Batcher(slow, size=1000, seconds=0.0, max_share=0.05) as b:
        b.add(1)  # interval 0: flushed at once, and took 0.05 s
        assert calls == [[1]]
        for i in range(2, 6):  # the next flush waits >= 0.05 / 0.05 = 1 s
            b.add(i)
        assert calls == [[1]]
    assert calls == [[1], [2, 3, 4, 5]]


def _environ(_):
    return {k: os.environ.get(k) for k in WORKER_ENV}


def test_local_workers_keep_field_sized_arrays_on_the_heap():
    with dask_client("local", workers=1) as client:
        ((_, env),) = list(map_fields(_environ, [0], client=client))
    assert env == {k: str(v) for k, v in WORKER_ENV.items()}


def test_items_per_task_groups_short_items_but_keeps_every_worker_busy():
    assert items_per_task(384, 2, None) == 1
    assert items_per_task(384, 2, 0.1) == 10  # ~1 s tasks
    assert items_per_task(384, 2, 2.0) == 1  # long items: one each
    assert items_per_task(20, 2, 0.001) == 2  # capped so each worker gets 4 tasks
    assert items_per_task(3, 2, 0.001) == 1


def _square_or_fail(i):
    if i == 13:
        raise ValueError("bad field")
    return i * i


def _task_key(_):
    from distributed import get_worker

    return str(get_worker().get_current_task())


def test_map_fields_groups_items_into_tasks_and_names_the_failing_item():
    with dask_client("threads", workers=2) as client:
        out = dict(map_fields(_square_or_fail, range(12), client=client, seconds_per_item=0.01))
        assert out == {i: i * i for i in range(12)}
        with pytest.raises(ClusterError, match="task for 13 failed on a worker: ValueError: bad field"):
            list(map_fields(_square_or_fail, range(10, 18), client=client, seconds_per_item=0.2))
        # items estimated at 0.5 s go 2 to a task (~1 s) in the first window (6 tasks, 3 per
        # thread); then they take ~0 s, and go as many to a task as leaves each thread 4 tasks of
        # what remains
        keys = dict(map_fields(_task_key, range(64), client=client, seconds_per_item=0.5))
        assert sorted(keys) == list(range(64))
        assert all(keys[i] == keys[i + 1] != keys[i + 2] for i in range(0, 12, 2))
        assert keys[12] == keys[12 + 52 // 8 - 1] != keys[12 + 52 // 8]
        assert len(set(keys.values())) < 40  # 64 without grouping


def _sleep(i):
    time.sleep(0.005)
    return _task_key(i)


def test_map_fields_groups_by_the_time_tasks_took():
    with dask_client("threads", workers=2) as client:
        keys = dict(map_fields(_sleep, range(80), client=client))
    assert sorted(keys) == list(range(80))
    # the first window (6 tasks) runs single items; then 5 ms items go several to a task
    # (~1 s, at most an eighth of what remains: 4 tasks for each of 2 threads), fewer as
    # the work runs out
    n_tasks = len(set(keys.values()))
    assert 6 < n_tasks < 40, n_tasks
    assert keys[6] == keys[7] == keys[6 + 74 // 8 - 1] != keys[6 + 74 // 8]


def _pid_and_thread(_):
    time.sleep(0.05)
    return os.getpid(), threading.current_thread().name


def test_small_local_work_runs_in_threads_of_this_process(monkeypatch):
    """A "local" scheduler for work estimated under SMALL_WORK_S (a small ingest) is a pool of threads
    of this process: no worker processes, no Dask. Larger estimates start worker processes."""
    import hts.orchestrate.dask as od

    with dask_client("local", workers=2, work_s=od.SMALL_WORK_S / 2) as client:
        assert isinstance(client, od.ThreadPool)
        where = dict(map_fields(_pid_and_thread, range(8), client=client))
        assert {pid for pid, _ in where.values()} == {os.getpid()}
        assert len({name for _, name in where.values()}) == 2  # both threads took fields
    # compute that releases the GIL has its own, larger threshold (segment passes it)
    with dask_client("local", workers=2, work_s=od.SMALL_COMPUTE_S / 2, small_s=od.SMALL_COMPUTE_S) as client:
        assert isinstance(client, od.ThreadPool) and client.threads == 2
    with pytest.raises(ClusterError, match="--workers 99"):
        with dask_client("local", workers=99, work_s=1.0):
            pass
    started = []
    monkeypatch.setattr(od, "_local_cluster", lambda scheduler, **kw: started.append(scheduler) or 1 / 0)
    with pytest.raises(ZeroDivisionError), dask_client("local", workers=2, work_s=od.SMALL_WORK_S * 2):
        pass
    with pytest.raises(ZeroDivisionError), dask_client("local", workers=2, work_s=None, small_s=od.SMALL_COMPUTE_S):
        pass  # no estimate: worker processes
    with pytest.raises(ZeroDivisionError), dask_client("processes", workers=2, work_s=1.0):
        pass  # asked for processes: processes
    assert started == ["local", "local", "processes"]


_ran: list[str] = []


def _slow_square(i):
    _ran.append("start")
    time.sleep(0.02)
    _ran.append("end")
    return i * i


def test_thread_pool_groups_fails_and_closes_like_a_cluster():
    """map_fields on the ThreadPool: every item once, a failing item named, and leaving the block waits
    for the running tasks and drops the queued ones (nothing still writes after it)."""
    import hts.orchestrate.dask as od

    with od.ThreadPool(2) as pool:
        assert dict(map_fields(_square_or_fail, range(12), client=pool, seconds_per_item=0.01)) == {
            i: i * i for i in range(12)
        }
        with pytest.raises(ClusterError, match="task for 13 failed on a worker: ValueError: bad field"):
            list(map_fields(_square_or_fail, range(10, 18), client=pool, seconds_per_item=0.2))
        futures = [pool.submit(_slow_square, i) for i in range(50)]
        time.sleep(0.1)
    assert all(f.done() for f in futures)
    ran = [i for i, f in enumerate(futures) if not f.cancelled()]
    assert 2 <= len(ran) < 50  # the running ones finished, the queued ones were dropped
    assert [futures[i].result() for i in ran] == [i * i for i in ran]
    assert _ran.count("start") == _ran.count("end") == len(ran)


def test_small_ingest_and_segment_never_import_distributed(tmp_path, fresh_python):
    """The point of the ThreadPool: a small ingest and a small classic segmentation in a fresh
    interpreter do not import ``distributed`` (0.7-0.9 s), yet each writes every field."""
    script = f"""
import sys, numpy as np, tifffile
from pathlib import Path
from skimage.draw import disk
src = Path({str(tmp_path)!r}) / "tiffs"
src.mkdir()
img = np.full((128, 128), 100, np.uint16)
for c in ((30, 30), (30, 90), (90, 60)):
    img[disk(c, 12)] = 2000
for i in range(4):
    tifffile.imwrite(src / f"P_B0{{2 + i // 2}}_s{{i % 2 + 1}}_w1.tif", img)
from hts.api import segment
from hts.config import Workspace
from hts.tasks.ingest import ingest
ws = Workspace(db=src.parent / "c.duckdb", plates_dir=src.parent / "plates", scheduler="local")
rep = ingest(src, workspace=ws, workers=2, name="P")
(seg,) = segment([rep.plate_id], engine="classic", workspace=ws, workers=2, pixel_size_um=0.65)
print(rep.fields_written, seg.fields_segmented, seg.objects["nuclei"], "distributed" in sys.modules)
"""
    assert fresh_python(script).split() == ["4", "4", "12", "False"]
