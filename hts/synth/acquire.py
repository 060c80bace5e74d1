"""An acquisition simulator: writes a TIFF-folder plate into a folder the way an imager does.

:func:`acquire` copies a finished plate folder (e.g. one :func:`hts.synth.make_plate` wrote)
into ``dest`` in acquisition order, field after field at ``fields_per_second``: side files
(``.HTD``, ``Index.idx.xml``) first, then each field's images channel by channel, each
image written in pieces (a file that grows) unless ``whole_files``. Faults a watcher must
survive: ``late_channel`` (that channel of every field lands after the next field's
images), ``corrupt`` (those files stay truncated for good). ``hts demo --live`` and the
tests of ``hts watch`` use it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["acquisition_order", "acquire"]


def acquisition_order(source: str | Path) -> list[list[Path]]:
    """The plate's image files grouped per field (well, then site), in the order an imager takes them."""
    from hts.formats import open_plate

    reader = open_plate(source)
    desc = reader.describe()
    return [[Path(p) for p in f.key] for f in desc.fields]


def _write_in_pieces(src: Path, dst: Path, pieces: int, pause_s: float, stop: threading.Event | None) -> None:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    step = max(1, len(data) // pieces)
    with open(dst, "wb") as f:
        for start in range(0, len(data), step):
            f.write(data[start : start + step])
            f.flush()
            os.fsync(f.fileno())
            if pause_s and start + step < len(data):
                if stop is not None and stop.wait(pause_s):
                    return
                elif stop is None:
                    time.sleep(pause_s)


def acquire(
    source: str | Path,
    dest: str | Path,
    *,
    fields_per_second: float = 2.0,
    whole_files: bool = False,
    late_channel: int | None = None,
    corrupt: Iterable[str] = (),
    stop: threading.Event | None = None,
    on_field: Callable[[int, list[Path]], None] | None = None,
) -> int:
    """Write the plate folder ``source`` into ``dest`` as an imager would; returns the fields written.

    ``late_channel``: index of a channel whose file of each field is written after the next
    field's files; ``corrupt``: file names written truncated (half their bytes) and never
    finished; ``stop``: set it to end early (a plate interrupted mid-acquisition).
    """
    source, dest = Path(source), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    fields = acquisition_order(source)
    images = {p.resolve() for group in fields for p in group}
    for side in sorted(p for p in source.rglob("*") if p.is_file() and p.resolve() not in images):
        if side.suffix.lower() in (".tif", ".tiff"):
            continue  # thumbnails and other images the layout skips: not part of the plate
        target = dest / side.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(side, target)
    broken = set(corrupt)
    period = 1.0 / fields_per_second if fields_per_second > 0 else 0.0
    held: list[Path] = []
    written = 0
    for k, group in enumerate(fields):
        t0 = time.perf_counter()
        late = [group[late_channel]] if late_channel is not None and late_channel < len(group) else []
        for src in [p for p in group if p not in late] + held:
            if stop is not None and stop.is_set():
                return written
            dst = dest / src.relative_to(source)
            if src.name in broken:
                dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
                continue
            pieces = 1 if whole_files else 3
            _write_in_pieces(src, dst, pieces, 0.0 if whole_files else period / (4 * len(group)), stop)
        held = late
        written += 1
        if on_field is not None:
            on_field(k, group)
        spare = period - (time.perf_counter() - t0)
        if spare > 0:
            if stop is not None:
                if stop.wait(spare):
                    return written
            else:
                time.sleep(spare)
    for src in held:
        _write_in_pieces(src, dest / src.relative_to(source), 1, 0.0, stop)
    return written
