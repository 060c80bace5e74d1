"""Nikon ND2 plates, read with the `nd2` library.

One ND2 file is one plate acquisition: its XY positions are the fields. Wells
come from the position names ("A01", "A1", "Well A01", "B12#2"); when no
position is named, from the stage XY positions snapped onto a standard plate
grid (:func:`hts.wells.snap_to_wells`). Z and T loops are kept.
"""

from __future__ import annotations

import atexit
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from hts.errors import SourceError
from hts.formats.base import Channel, PlateDescription, PlateReader, SourceField
from hts.wells import WellRef, parse_well, plate_type_for, snap_to_wells, well_field_suffix

__all__ = ["ND2Reader"]

_MAGIC = b"\xda\xce\xbe\x0a"  # first bytes of a modern (v3) ND2 file: the chunk magic 0x0ABECEDA

# Open files are shared by the tasks of a worker process: opening parses the chunk
# map and metadata, which we do not want to repeat for every field of a large
# plate. The nd2 library memory-maps the file, and every page read stays resident
# (and counted in RSS) while the map is open, so a handle is retired after
# _READS_PER_HANDLE field reads and closed by its last user: resident mapped pages
# stay bounded however large the plate is.
_READS_PER_HANDLE = 8


class _Handle:
    __slots__ = ("file", "users", "reads")

    def __init__(self, file: Any):
        self.file, self.users, self.reads = file, 0, 0


_handles: dict[tuple[str, float], _Handle] = {}
_handles_lock = threading.Lock()
# Frames of each position, by file identity: (sequence index, t, z). Computed once.
_frame_index: dict[tuple[str, float], dict[int, list[tuple[int, int, int]]]] = {}


@atexit.register
def _close_all() -> None:
    with _handles_lock:
        for h in _handles.values():
            try:
                h.file.close()
            except Exception:
                pass
        _handles.clear()
        _frame_index.clear()


def _key(path: Path) -> tuple[str, float]:
    try:
        return (str(path), path.stat().st_mtime)
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e})") from None


@contextmanager
def _borrow(path: Path, *, reading: bool = False) -> Iterator[Any]:
    """An open ``nd2.ND2File`` for ``path``, shared between the threads of this process."""
    import nd2

    key = _key(path)
    with _handles_lock:
        h = _handles.get(key)
        if h is None:
            f = None
            try:
                f = nd2.ND2File(path)
                f.sizes  # noqa: B018 - force metadata parsing now, to fail early
            except Exception as e:  # nd2 raises many types on corrupt input
                if f is not None:
                    f.close()
                raise SourceError(f"{path}: not a readable ND2 file ({_reason(e)})") from None
            h = _handles[key] = _Handle(f)
        h.users += 1
    try:
        yield h.file
    finally:
        with _handles_lock:
            h.users -= 1
            h.reads += reading
            if h.reads >= _READS_PER_HANDLE:
                if _handles.get(key) is h:
                    del _handles[key]  # new borrowers open a fresh handle
                if h.users == 0:
                    h.file.close()


def _frames_by_position(f, key: tuple[str, float]) -> dict[int, list[tuple[int, int, int]]]:
    with _handles_lock:
        index = _frame_index.get(key)
    if index is None:
        index = {}
        for seq, idx in enumerate(f.loop_indices):
            index.setdefault(idx.get("P", 0), []).append((seq, idx.get("T", 0), idx.get("Z", 0)))
        with _handles_lock:
            _frame_index[key] = index
    return index


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _rgb_hex(color: Any) -> str | None:
    try:
        return f"{int(color.r):02X}{int(color.g):02X}{int(color.b):02X}"
    except AttributeError:
        return None


class ND2Reader(PlateReader):
    """Reader for ``.nd2`` files.

    Options: ``plate_wells`` (96/384/1536 hint for stage-position snapping),
    ``name`` (plate name; default the file stem).
    """

    format = "nd2"

    @classmethod
    def sniff(cls, path: Path) -> bool:
        if not path.is_file():
            return False
        if path.suffix.lower() == ".nd2":
            return True
        with open(path, "rb") as fh:
            return fh.read(4) == _MAGIC

    # -- metadata ---------------------------------------------------------
    def describe(self) -> PlateDescription:
        path = self.source
        with _borrow(path) as f:
            try:
                return self._describe(f)
            except SourceError:
                raise
            except Exception as e:
                raise SourceError(f"{path}: unreadable ND2 metadata ({_reason(e)})") from None

    def _describe(self, f) -> PlateDescription:
        path = self.source
        sizes = dict(f.sizes)
        if "S" in sizes and sizes["S"] > 1:
            raise SourceError(f"{path}: RGB ND2 files are not supported (sizes {sizes})")
        unknown = set(sizes) - {"P", "T", "Z", "C", "Y", "X", "S"}
        if unknown:
            raise SourceError(f"{path}: unsupported ND2 loop(s) {sorted(unknown)} (sizes {sizes})")
        n_t, n_z, n_c = sizes.get("T", 1), sizes.get("Z", 1), sizes.get("C", 1)
        ny, nx = sizes["Y"], sizes["X"]

        names, xy = self._positions(f)
        wells, plate_type, how = self._wells(names, xy)
        first: dict[tuple[WellRef, int], int] = {}
        for p, (w, n) in enumerate(zip(wells, names)):
            suffix = well_field_suffix(n) if n else None
            if suffix is not None:
                if (w, suffix) in first:
                    raise SourceError(
                        f"{path}: positions {first[(w, suffix)]} and {p} are both named {n!r} (duplicate field of well {w.name})"
                    )
                first[(w, suffix)] = p
        index_in_well: dict[WellRef, int] = defaultdict(int)
        order = sorted(
            range(len(wells)),
            key=lambda p: (wells[p], well_field_suffix(names[p] or "") or 0, p),
        )
        fields = []
        for p in order:
            w = wells[p]
            fields.append(
                SourceField(
                    well=w,
                    index=index_in_well[w],
                    key=p,
                    stage_xy_um=(float(xy[p][0]), float(xy[p][1])) if xy is not None else None,
                    name=names[p],
                )
            )
            index_in_well[w] += 1

        channels = []
        meta = f.metadata
        for ch in (meta.channels or [])[:n_c]:
            c = ch.channel
            channels.append(
                Channel(
                    name=c.name or f"C{c.index}",
                    emission_nm=c.emissionLambdaNm,
                    excitation_nm=c.excitationLambdaNm,
                    color=_rgb_hex(c.color),
                )
            )
        while len(channels) < n_c:
            channels.append(Channel(name=f"C{len(channels)}"))
        if len({c.name for c in channels}) != len(channels):
            raise SourceError(f"{path}: duplicate channel names {[c.name for c in channels]}")

        vs = f.voxel_size()
        instrument: dict[str, Any] = {"well_assignment": how, "nd2_version": ".".join(map(str, f.version))}
        if meta.channels:
            mic = meta.channels[0].microscope
            instrument.update(
                objective=mic.objectiveName,
                magnification=mic.objectiveMagnification,
                numerical_aperture=mic.objectiveNumericalAperture,
            )
        info = f.text_info or {}
        for k in ("date", "optics", "capturing"):
            if info.get(k):
                instrument[f"text_{k}"] = str(info[k])[:2000]
        interval = None
        for loop in f.experiment or []:
            if loop.type == "TimeLoop":
                period = getattr(loop.parameters, "periodMs", None)
                interval = float(period) / 1000.0 if period else None

        return PlateDescription(
            name=str(self.options.get("name") or path.stem),
            format=self.format,
            plate_type=plate_type,
            channels=channels,
            shape=(n_t, n_c, n_z, ny, nx),
            dtype=np.dtype(f.dtype).name,
            fields=fields,
            files=[path],
            pixel_size_um=(vs.x, vs.y, vs.z if n_z > 1 else None),
            time_interval_s=interval,
            instrument=instrument,
        )

    def _positions(self, f) -> tuple[list[str | None], np.ndarray | None]:
        n_p = f.sizes.get("P", 1)
        for loop in f.experiment or []:
            if loop.type == "XYPosLoop":
                pts = loop.parameters.points
                if len(pts) != n_p:
                    raise SourceError(
                        f"{self.source}: XY loop lists {len(pts)} points but the file holds {n_p} positions"
                    )
                names = [(p.name or None) for p in pts]
                xy = np.array([[p.stagePositionUm.x, p.stagePositionUm.y] for p in pts], float)
                return names, xy
        # No XY loop: a single position; take its name and stage XY from frame metadata.
        try:
            pos = f.frame_metadata(0).channels[0].position
            return [pos.name or None], np.array([[pos.stagePositionUm.x, pos.stagePositionUm.y]])
        except Exception:
            return [None] * n_p, None

    def _wells(self, names, xy) -> tuple[list[WellRef], Any, str]:
        hint = self.options.get("plate_wells")
        parsed: list[WellRef | None] = []
        for n in names:
            try:
                parsed.append(parse_well(n) if n else None)
            except ValueError:
                parsed.append(None)
        if all(p is not None for p in parsed):
            wells = [p for p in parsed if p is not None]
            return wells, plate_type_for(wells, hint=hint), "position names"
        named_bad = [n for n, p in zip(names, parsed) if n and p is None]
        if any(p is not None for p in parsed):
            bad = named_bad[0] if named_bad else "an unnamed position"
            raise SourceError(
                f"{self.source}: some positions are named by well and some are not (e.g. {bad!r}); "
                "name every position by well or none"
            )
        if len(names) == 1:
            wells = [WellRef(0, 0)]
            return wells, plate_type_for(wells, hint=hint), "single position"
        if xy is None:
            raise SourceError(f"{self.source}: positions have neither well names nor stage coordinates")
        wells, pt = snap_to_wells(xy, plate_wells=hint)
        return wells, pt, "stage positions"

    # -- pixels -------------------------------------------------------------
    def read_field(self, field: SourceField, description: PlateDescription) -> np.ndarray:
        n_t, n_c, n_z, ny, nx = description.shape
        out = np.empty((n_t, n_c, n_z, ny, nx), dtype=description.dtype)
        p = int(field.key)
        try:
            with _borrow(self.source, reading=True) as f:
                frames = _frames_by_position(f, _key(self.source)).get(p, [])
                if len(frames) != n_t * n_z:
                    raise SourceError(
                        f"{self.source}: position {p} ({field.well.name}) has {len(frames)} frames, expected {n_t * n_z}"
                    )
                for seq, t, z in frames:
                    out[t, :, z] = np.asarray(f.read_frame(seq)).reshape(n_c, ny, nx)
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(
                f"{self.source}: cannot read position {p} ({field.well.name}) — file truncated or corrupt ({_reason(e)})"
            ) from None
        return out
