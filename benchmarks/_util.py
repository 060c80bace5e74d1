"""Measurement helpers shared by the benchmarks."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil


def _anon_rss(pid: int) -> int:
    """Anonymous resident memory (heap, arrays) of a process, excluding file-backed mapped pages."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRSS:
    """Samples the resident memory of this process and all its children (Dask workers) every ``interval`` s.

    ``peak`` is total RSS, which also counts pages of memory-mapped input files
    (the ``nd2`` reader maps the file); ``peak_anon`` counts only anonymous memory
    (what the processes allocate themselves).
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self.peak_anon = 0
        self._child_cpu: dict[int, float] = {}  # last seen user+system seconds of each child process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, int]:
        me = psutil.Process()
        total, anon = me.memory_info().rss, _anon_rss(me.pid)
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
                anon += _anon_rss(child.pid)
                t = child.cpu_times()
                self._child_cpu[child.pid] = t.user + t.system
            except psutil.Error:
                pass
        return total, anon

    def _run(self) -> None:
        while not self._stop.is_set():
            total, anon = self._sample()
            self.peak = max(self.peak, total)
            self.peak_anon = max(self.peak_anon, anon)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.baseline = self._sample()[0]
        self._child_cpu0 = dict(self._child_cpu)
        self._cpu0 = time.process_time()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        own = time.process_time() - self._cpu0
        children = sum(v - self._child_cpu0.get(pid, 0.0) for pid, v in self._child_cpu.items())
        #: CPU seconds (user + system) of this process and its children during the block; children
        #: that end between samples lose at most ``interval`` s each.
        self.cpu = own + children


@contextmanager
def scratch_dir(workdir: str | None, name: str):
    """A benchmark's working folder: ``workdir`` when given (created, kept), else a temporary one removed at the end."""
    root = Path(workdir or tempfile.mkdtemp(prefix=f"hts-bench-{name}-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    finally:
        if not workdir:
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def timer():
    t = {"s": 0.0}
    t0 = time.perf_counter()
    yield t
    t["s"] = time.perf_counter() - t0


def mb(n: float) -> float:
    return round(n / 1e6, 1)


def machine_info() -> dict:
    """CPU count, load averages, memory and Python/platform, for the record (other processes may share the machine)."""
    import os
    import platform

    load = os.getloadavg()
    vm = psutil.virtual_memory()
    return {
        "cpus": os.cpu_count(),
        "loadavg_1_5_15": [round(x, 2) for x in load],
        "mem_total_GB": round(vm.total / 1e9, 1),
        "mem_available_GB": round(vm.available / 1e9, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def pg_bin(name: str) -> str | None:
    """A PostgreSQL program: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    import shutil

    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


@contextmanager
def postgres_server(user: str = "hts"):
    """A throw-away PostgreSQL cluster (``initdb`` in a temporary folder, trust authentication, no fsync)
    on a free local port; yields the port and stops and removes it afterwards. As root it runs as the
    ``postgres`` user (PostgreSQL refuses root). Raises RuntimeError naming what is missing."""
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl and pg_bin("psql")):
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="hts-pg-"))  # not under a root-only folder: the server user reads it
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no 'postgres' user to run PostgreSQL as") from None
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)  # fmt: skip
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"],
                       check=True, capture_output=True)  # fmt: skip
        yield port
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def create_database(port: int, name: str, user: str = "hts") -> str:
    """CREATE DATABASE ``name`` on the local server; returns its DuckLake URL."""
    import subprocess

    subprocess.run([pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", "postgres", "-qc",
                    f"CREATE DATABASE {name}"], check=True, capture_output=True)  # fmt: skip
    return f"ducklake:postgres://{user}@127.0.0.1:{port}/{name}"
