"""Orchestration helpers: result batching and the environment of local worker processes."""

from __future__ import annotations

import os
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


def test_small_local_work_runs_in_threads_of_this_process(monkeypatch):
    """A "local" cluster for work estimated under SMALL_WORK_S (a small ingest) is threads of this
    process: no worker processes to start. Larger estimates start worker processes."""
    import hts.orchestrate.dask as od

    with dask_client("local", workers=2, work_s=od.SMALL_WORK_S / 2) as client:
        assert set(client.run(os.getpid).values()) == {os.getpid()}
        assert sum(client.nthreads().values()) == 2
    # compute that releases the GIL has its own, larger threshold (segment passes it)
    with dask_client("local", workers=2, work_s=od.SMALL_COMPUTE_S / 2, small_s=od.SMALL_COMPUTE_S) as client:
        assert set(client.run(os.getpid).values()) == {os.getpid()}
    started = []
    monkeypatch.setattr(od, "_local_cluster", lambda scheduler, **kw: started.append(scheduler) or 1 / 0)
    with pytest.raises(ZeroDivisionError), dask_client("local", workers=2, work_s=od.SMALL_WORK_S * 2):
        pass
    with pytest.raises(ZeroDivisionError), dask_client("local", workers=2, work_s=None, small_s=od.SMALL_COMPUTE_S):
        pass  # no estimate: worker processes
    with pytest.raises(ZeroDivisionError), dask_client("processes", workers=2, work_s=1.0):
        pass  # asked for processes: processes
    assert started == ["local", "local", "processes"]
