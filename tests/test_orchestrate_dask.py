"""Orchestration helpers: result batching and the environment of local worker processes."""

from __future__ import annotations

import os
import time

import pytest

from hts.orchestrate.dask import WORKER_ENV, Batcher, dask_client, map_fields


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
