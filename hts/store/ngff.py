"""OME-Zarr (NGFF 0.5, Zarr v3) HCS plate store.

Layout::

    PLATE.zarr/                 plate group: ome.plate + hts (plate id, source fingerprint)
      B/03/                     well group:  ome.well (its fields)
        0/                      field group: ome.multiscales + ome.omero
          0, 1, 2 ...           pyramid levels, (t, c, z, y, x), chunked (1, 1, 1, tile, tile)

The plate skeleton — every group, every array and all NGFF metadata — is written
once by the client (:meth:`PlateStore.create`). Workers then only fill chunks of
the fields they are given (:meth:`PlateStore.write_field`), so concurrent
writers never touch the same file and an interrupted write is repaired by
writing the field again.

Metadata and chunk writes go through zarr's asynchronous API in batches (one
``zarr.create_hierarchy`` for a skeleton, one gathered call for all pyramid levels
of a field): zarr's synchronous calls cost 2-6 ms of CPU each in its Python layer,
which made the skeleton of a 192-field plate take 4 s on the client and label
images 70 ms per field on the workers (``docs/benchmarks.md``, *third round: the plate store*).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import math
import os
import shutil
import struct
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle
from zarr.core.group import GroupMetadata
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.core.sync import sync as _zarr_sync
from zarr.storage import LocalStore, StorePath

from hts import __version__
from hts.errors import StoreError
from hts.formats.base import Channel, PlateDescription
from hts.store.location import filesystem, is_url, join, location, storage_options
from hts.wells import WellRef

__all__ = ["PlateStore", "NGFF_VERSION", "pyramid_levels", "downsample2"]

NGFF_VERSION = "0.5"
AXES = ("t", "c", "z", "y", "x")
# Blosc-zstd level 2 with byte shuffle. On a 1024² 16-bit field it compresses 1.82x at level 3
# and 1.78x at level 2, but level 3's larger Blosc blocks cost 2.2x the time (40 vs 18 ms per
# 3-channel field on one core); on the real 256² ND2 fields in tests/data the ratio is 1.58 vs
# 1.55 (level 5: +0.4% size for 2.4x level 3's time). Decompression speed is the same.
COMPRESSION = {"cname": "zstd", "clevel": 2, "shuffle": "shuffle"}
_DEFAULT_COLORS = ["0000FF", "00FF00", "FF0000", "FF00FF", "00FFFF", "FFFF00", "FFFFFF"]


def pyramid_levels(shape_yx: tuple[int, int], *, min_size: int = 256) -> int:
    """Number of levels (halving y and x each time) until the larger side is at most ``min_size``."""
    n, size = 1, max(shape_yx)
    while size > min_size:
        size = (size + 1) // 2
        n += 1
    return n


def downsample2(a: np.ndarray) -> np.ndarray:
    """Halve the last two axes by 2×2 block means (odd edges padded by replication), keeping dtype."""
    ny, nx = a.shape[-2:]
    if ny % 2 or nx % 2:
        pad = [(0, 0)] * (a.ndim - 2) + [(0, ny % 2), (0, nx % 2)]
        a = np.pad(a, pad, mode="edge")
    ny, nx = a.shape[-2:]
    if a.dtype in (np.uint8, np.uint16):
        # Integer path, 3.5x faster than float means: each row viewed as pixel pairs packed in
        # one integer of twice the width, the pair sum is (low half + high half) on contiguous
        # rows, never a strided column; then the 2x2 sum is divided by 4 rounding half to even,
        # exactly as np.rint(mean) does: floor((s + 1 + (s // 4) % 2) / 4).
        a = np.ascontiguousarray(a)
        wide, bits = (np.uint32, 16) if a.dtype == np.uint16 else (np.uint16, 8)
        mask = (1 << bits) - 1
        even, odd = a[..., ::2, :].view(wide), a[..., 1::2, :].view(wide)
        s = even & mask
        s += even >> bits
        s += odd & mask
        s += odd >> bits
        q = s >> 2
        q &= 1
        q += 1
        q += s
        q >>= 2
        return q.astype(a.dtype)
    blocks = a.reshape(*a.shape[:-2], ny // 2, 2, nx // 2, 2)
    mean = blocks.astype(np.float32).mean(axis=(-3, -1))
    if np.issubdtype(a.dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(a.dtype)


def _plate_attrs(
    description: PlateDescription, *, plate_id: str, fingerprint: str, shape, tile: int, levels: int
) -> dict:
    """The plate group's attributes: NGFF plate metadata and hts's own."""
    wells = description.wells
    return {
        "ome": {
            "version": NGFF_VERSION,
            "plate": {
                "version": NGFF_VERSION,
                "name": description.name,
                "rows": [{"name": r} for r in description.plate_type.row_names],
                "columns": [{"name": c} for c in description.plate_type.column_names],
                "wells": [{"path": w.path, "rowIndex": w.row, "columnIndex": w.column} for w in wells],
                "field_count": max(description.fields_per_well.values()),
                "acquisitions": [{"id": 0, "name": description.name}],
            },
        },
        "hts": {
            "plate_id": plate_id,
            "name": description.name,
            "fingerprint": fingerprint,
            "source_format": description.format,
            "shape": list(shape),
            "dtype": description.dtype,
            "tile": tile,
            "levels": levels,
            "hts_version": __version__,
        },
    }


def _well_attrs(n_fields: int) -> dict:
    return {
        "ome": {
            "version": NGFF_VERSION,
            "well": {"images": [{"path": str(i), "acquisition": 0} for i in range(n_fields)]},
        }
    }


def _field_nodes(description: PlateDescription, shape, levels: int, tile: int, fields: dict) -> dict[str, Any]:
    """Groups and empty level arrays of ``fields`` (well -> field indices), with their wells' groups."""
    multiscales = _multiscales(description, shape, levels)
    omero = _omero(description.channels, description.dtype)
    # every field's group and level arrays have the same metadata: built once, shared
    field_meta = GroupMetadata(
        attributes={"ome": {"version": NGFF_VERSION, "multiscales": multiscales, "omero": omero}}
    )
    level_meta = [
        _array_metadata(shape[:3] + _level_yx(shape[-2:], level), tile, description.dtype) for level in range(levels)
    ]
    per_well = description.fields_per_well
    nodes: dict[str, Any] = {}
    for w, indices in fields.items():
        nodes[w.path] = GroupMetadata(attributes=_well_attrs(per_well[w]))
        for i in indices:
            nodes[f"{w.path}/{i}"] = field_meta
            for level, meta in enumerate(level_meta):
                nodes[f"{w.path}/{i}/{level}"] = meta
    return nodes


class PlateStore:
    """An NGFF HCS plate on disk or in object storage.

    ``path`` is a local path or an fsspec URL (``s3://bucket/plates/X.zarr``; see
    :mod:`hts.store.location` for credentials). ``self.path`` is a :class:`Path`
    for a local store and the URL string for a remote one.
    """

    def __init__(self, path: str | Path):
        self.path = location(path) if is_url(path) or str(path).startswith("file://") else Path(path)
        self.remote = isinstance(self.path, str)
        self._zstore: Any = None  # zarr store at the root, made on first write (see _zarr_store)
        self._meta: dict[str, Any] = {}  # array path -> zarr metadata, of the arrays this object made or read

    @property
    def uri(self) -> str:
        return str(self.path)

    def _loc(self, *parts: str):
        """Where a group or array inside the store lives (Path or URL) and how to open it."""
        loc = join(self.path, *parts) if parts else self.path
        return loc, ({"storage_options": storage_options(self.path)} if self.remote else {})

    def _open_group(self, *parts: str, mode: str) -> zarr.Group:
        loc, kw = self._loc(*parts)
        return zarr.open_group(loc, mode=mode, zarr_format=3, **kw)

    def _open_array(self, *parts: str, mode: str = "r") -> zarr.Array:
        loc, kw = self._loc(*parts)
        return zarr.open_array(loc, mode=mode, zarr_format=3, **kw)

    def _zarr_store(self):
        """The zarr store object at the plate's root (kept: fsspec clients are costly to make)."""
        if self._zstore is None:
            if self.remote:
                from zarr.storage import FsspecStore

                self._zstore = FsspecStore.from_url(self.path, storage_options=storage_options(self.path))
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self._zstore = _ChunkFileStore(self.path)
        return self._zstore

    def _create_nodes(self, nodes: dict[str, Any], *, overwrite: bool = False) -> None:
        """Write groups and arrays (``path -> GroupMetadata | ArrayV3Metadata``) concurrently.

        A group named here with ``overwrite`` loses its children: name only new groups.
        Missing parent groups are made (empty). A local store writes them on this thread
        (:func:`_write_local_nodes`).
        """
        local = self._local_nodes(nodes, overwrite=overwrite)
        if local is not None:
            _write_local_nodes(self.path, local, replace=list(nodes) if overwrite else [])
            self._meta.update({p: m for p, m in nodes.items() if not isinstance(m, GroupMetadata)})
            return
        for _ in zarr.create_hierarchy(store=self._zarr_store(), nodes=nodes, overwrite=overwrite):
            pass

    def _local_nodes(self, nodes: dict[str, Any], *, overwrite: bool) -> dict[str, Any] | None:
        """``nodes`` and the empty groups their missing parents need (zarr makes those implicitly), to
        write into a local store; None for object stores, and where a node exists and is not to be
        replaced (zarr raises its error)."""
        if self.remote or (not overwrite and any((self.path / p / "zarr.json").exists() for p in nodes)):
            return None
        out = dict(nodes)
        for path in nodes:
            parts = path.split("/") if path else []
            for i in range(len(parts)):
                parent = "/".join(parts[:i])
                if parent not in out and not (self.path / parent / "zarr.json").is_file():
                    out[parent] = GroupMetadata()
        return out

    def _local_doc_bytes(self, path: str) -> bytes | None:
        """The ``zarr.json`` document of the node at ``path`` of a local store (None when there is none)."""
        try:
            return (self.path / path / "zarr.json").read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _local_doc(self, path: str) -> dict[str, Any] | None:
        raw = self._local_doc_bytes(path)
        return None if raw is None else json.loads(raw)

    def _local_array_meta(self, path: str) -> Any | None:
        """The zarr metadata of the local array at ``path`` (made or read by this object before, else read)."""
        meta = self._meta.get(path)
        if meta is None:
            raw = self._local_doc_bytes(path)
            if raw is None:
                return None
            meta = self._meta[path] = _array_meta_from_doc(raw)
        return meta

    def _zarr_array(self, array_path: str, missing: str = "no array here") -> zarr.Array:
        """The array at ``array_path`` opened through zarr (:class:`StoreError` saying ``missing`` when there is none)."""
        try:
            return self._open_array(array_path)
        except Exception:
            raise StoreError(f"{self.path}/{array_path}: {missing}") from None

    def _write_arrays(self, writes: list[tuple[str, Any, np.ndarray]]) -> None:
        """``array[selection] = data`` for every ``(array path, selection, data)``, concurrently.

        ``selection`` is ``...`` (the whole array) or leading integer indices (``(t, 0, 0)``),
        which must receive the array's remaining axes; shapes are checked before anything
        is written. Each chunk is its own write (:func:`_by_chunk`). In a local store, arrays
        stored as hts makes them are written on this thread (:func:`_write_local_chunks`).
        """
        if not self.remote:
            metas = [self._local_array_meta(p) for p, _, _ in writes]
            leads = [_lead(sel) for _, sel, _ in writes]
            if all(m is not None and _local_writable(m, lead) for m, lead in zip(metas, leads)):
                data = [np.asarray(d) for _, _, d in writes]
                for meta, (p, _, _), lead, d in zip(metas, writes, leads, data):  # every shape and index first
                    _check_lead(meta, lead, where=f"{self.path}/{p}")
                    expect = tuple(meta.shape[len(lead) :])
                    if expect != d.shape:
                        raise StoreError(f"{self.path}/{p}: expects shape {expect}, got {d.shape}")
                for meta, (p, _, _), lead, d in zip(metas, writes, leads, data):
                    _write_local_chunks(self.path / p, meta, lead, d)
                return
        store = self._zarr_store()

        async def run() -> None:
            arrays = await asyncio.gather(*(zarr.AsyncArray.open(StorePath(store, p)) for p, _, _ in writes))
            # write every chunk, skipping zarr's check for chunks equal to the fill value: the check
            # costs half as much as compressing (20 ms of 60 per 1024² field), and fields are rarely empty
            arrays = [a.with_config({"write_empty_chunks": True}) for a in arrays]
            chunk_writes = []
            for arr, (p, sel, data) in zip(arrays, writes):
                lead = _lead(sel)
                expect = arr.shape[len(lead) :]
                if tuple(expect) != np.shape(data):
                    raise StoreError(f"{self.path}/{p}: expects shape {tuple(expect)}, got {np.shape(data)}")
                chunk_writes += [(arr, s, v) for s, v in _by_chunk(lead, np.asarray(data), arr.chunks)]
            await asyncio.gather(*(arr.setitem(s, v) for arr, s, v in chunk_writes))

        _zarr_sync(run())

    def _update_attrs(self, paths: list[str], fn, *, batch: int = 256) -> None:
        """For each group path, replace the top-level attributes ``fn(path, current attributes)``
        returns; ``batch`` groups at a time."""
        store = self._zarr_store()

        async def one(path: str) -> None:
            g = await zarr.AsyncGroup.open(StorePath(store, path))
            await g.update_attributes(fn(path, dict(g.attrs)))

        async def run() -> None:
            for i in range(0, len(paths), batch):
                await asyncio.gather(*(one(p) for p in paths[i : i + batch]))

        _zarr_sync(run())

    # -- opening ------------------------------------------------------------
    def exists(self) -> bool:
        if self.remote:
            fs, path = filesystem(self.path)
            return fs.exists(f"{path}/zarr.json")
        return (self.path / "zarr.json").exists()

    def occupied(self) -> bool:
        """Whether anything (a plate, a half-written one, other files) is at the store's path."""
        if self.remote:
            fs, path = filesystem(self.path)
            return fs.exists(path) and bool(fs.ls(path, detail=False))
        return self.path.exists()

    def group(self, mode: str = "r") -> zarr.Group:
        try:
            return self._open_group(mode=mode)
        except Exception as e:
            raise StoreError(f"{self.path}: not a readable Zarr v3 plate ({type(e).__name__}: {e})") from None

    @property
    def hts_attrs(self) -> dict[str, Any]:
        """hts's own attributes of the plate (plate id, source fingerprint...), {} if none."""
        if not self.exists():
            return {}
        try:
            return dict(self.group().attrs.get("hts", {}))
        except StoreError:
            return {}

    # -- creating -----------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        description: PlateDescription,
        *,
        plate_id: str,
        fingerprint: str,
        tile: int = 1024,
        max_project: bool = False,
        overwrite: bool = False,
    ) -> PlateStore:
        """Write the plate skeleton: plate, well and field groups, empty level arrays, NGFF metadata.

        The plate group's attributes (with ``hts.plate_id``) are written last, so a store whose
        plate id is readable holds a whole skeleton: an interrupted ``create`` leaves a store
        that ``ingest`` recognises as unfinished and makes again. A skeleton that fails with an
        error is removed (everything under ``path`` was written here).
        """
        self = cls(path)
        if self.occupied():
            if not overwrite:
                raise StoreError(f"{self.path} already exists; pass --overwrite to replace it")
            self.remove()
        shape = field_shape(description, max_project=max_project)
        levels = pyramid_levels(shape[-2:])
        root_attrs = _plate_attrs(description, plate_id=plate_id, fingerprint=fingerprint, shape=shape, tile=tile,
                                  levels=levels)  # fmt: skip
        per_well = description.fields_per_well
        nodes = _field_nodes(description, shape, levels, tile, {w: range(per_well[w]) for w in description.wells})
        try:
            self._create_nodes(nodes)  # and the row groups and an empty plate group, implicitly
            self._update_attrs([""], lambda _path, _attrs: root_attrs)
        except Exception:
            with contextlib.suppress(Exception):  # the skeleton's own error is the one to report
                self.remove()
            raise
        return self

    def extend(self, description: PlateDescription, *, fingerprint: str, max_project: bool = False) -> None:
        """Add the wells and fields of ``description`` the store lacks, as :meth:`create` makes them (``hts watch``).

        The plate's metadata (wells, rows and columns of its format, field count, fingerprint)
        becomes ``description``'s; groups and arrays already there are not touched.
        """
        hts = self.hts_attrs
        shape, levels, tile = tuple(hts["shape"]), int(hts["levels"]), int(hts["tile"])
        if tuple(field_shape(description, max_project=max_project)) != shape:
            raise StoreError(f"{self.path}: the new fields' shape differs from the plate's {shape}")
        per_well = description.fields_per_well
        have = {w["path"] for w in self.group().attrs["ome"]["plate"]["wells"]}
        todo: dict[WellRef, range] = {}
        grown: list[str] = []
        for w in description.wells:
            start = 0
            if w.path in have:
                start = len(self._open_group(w.path, mode="r").attrs["ome"]["well"]["images"])
                if per_well[w] > start:
                    grown.append(w.path)
            if per_well[w] > start:
                todo[w] = range(start, per_well[w])
        nodes = _field_nodes(description, shape, levels, tile, todo)
        for path in grown:
            nodes.pop(path)  # the well group exists: its attributes are updated below, its children kept
        # overwrite: nodes a cut-off extend left behind are made again (they hold no pixels: a field is
        # written only once the catalog lists it, after this)
        self._create_nodes(nodes, overwrite=True)
        by_path = {w.path: per_well[w] for w in description.wells}
        self._update_attrs(grown, lambda path, _attrs: _well_attrs(by_path[path]))
        root = _plate_attrs(description, plate_id=hts["plate_id"], fingerprint=fingerprint, shape=shape, tile=tile,
                            levels=levels)  # fmt: skip
        root["hts"]["hts_version"] = hts.get("hts_version", __version__)
        self._update_attrs([""], lambda _path, _attrs: root)

    def check_writable(self, *paths: str) -> None:
        """Raise :class:`StoreError` unless files can be created in the store's root and in ``paths`` (local stores).

        Called before work that writes into a plate (labels), so that a read-only file system or
        missing permissions is one line up front, not an error in every worker task. Object
        stores are not probed (their permissions show on the first write).
        """
        if self.remote:
            return
        for rel in ("", *paths):
            folder = self.path / rel if rel else self.path
            probe = folder / f".hts-write-probe-{os.getpid()}"
            try:
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as e:
                raise StoreError(
                    f"{folder}: cannot write into the plate store ({e.strerror or e}); nothing was changed"
                ) from None

    def set_aside(self) -> Path | None:
        """Rename a local store out of the way (a hidden sibling) and return where it went; None for object storage.

        The first step of replacing a store: a rename either happens whole or not
        at all (a read-only file system refuses it), so callers change the catalog
        only once the old store is out of the way, and delete it last.
        """
        if self.remote or not self.path.exists():
            return None
        aside = self.path.with_name(f".{self.path.name}.{os.getpid()}.old")
        try:
            self.path.rename(aside)
        except OSError as e:
            raise StoreError(
                f"{self.path}: cannot replace the store ({e.strerror or e}); nothing was changed"
            ) from None
        return aside

    def remove(self) -> None:
        """Delete the store from disk (or object storage)."""
        if self.remote:
            fs, path = filesystem(self.path)
            try:
                fs.rm(path, recursive=True)
            except FileNotFoundError:
                pass
            fs.invalidate_cache()
            return
        if self.path.is_dir():
            shutil.rmtree(self.path)
        elif self.path.exists():
            self.path.unlink()

    # -- fields -------------------------------------------------------------
    def field_path(self, well: WellRef | str, index: int) -> str:
        path = well.path if isinstance(well, WellRef) else well
        return f"{path}/{index}"

    def write_field(self, well: WellRef, index: int, data: np.ndarray, *, levels: int | None = None) -> None:
        """Write a field's level 0 and its pyramid. ``data`` is (t, c, z, y, x).

        ``levels``: the plate's pyramid depth (read from the plate's attributes when not given).
        """
        levels = levels or int(self.hts_attrs["levels"])
        fp = self.field_path(well, index)
        pyramid = [data]
        while len(pyramid) < levels:
            pyramid.append(downsample2(pyramid[-1]))
        self._write_arrays([(f"{fp}/{i}", ..., level) for i, level in enumerate(pyramid)])

    def read_image(self, field_path: str, level: int = 0) -> zarr.Array:
        """The (t, c, z, y, x) array of the field at ``field_path`` (as the catalog records it), one pyramid level."""
        try:
            return self._open_array(field_path, str(level))
        except Exception:
            raise StoreError(f"{self.path}/{field_path}: no image at pyramid level {level}") from None

    def shape_of(self, array_path: str) -> tuple[int, ...]:
        """The shape of the array at ``array_path`` (a local store's from its document)."""
        meta = self._local_array_meta(array_path) if not self.remote else None
        return tuple(meta.shape) if meta is not None else tuple(self._zarr_array(array_path).shape)

    def read_block(self, array_path: str, lead: tuple[int, ...] = (), *, missing: str = "no array here") -> np.ndarray:
        """``array[lead]`` as a numpy array: leading integer indices (``(t,)`` of a field's image,
        ``(t, 0, 0)`` of a label image), the remaining axes whole.

        In a local store an array stored as hts makes them is read on this thread (its chunks
        decoded by zarr's own Blosc object; chunks never written read as the fill value), else
        through zarr. No array there: a :class:`StoreError` naming the path and saying ``missing``.
        """
        meta = self._local_array_meta(array_path) if not self.remote else None
        if meta is None or _blosc_encoder(meta) is None:
            return np.asarray(self._zarr_array(array_path, missing)[lead])
        return _read_local_chunks(self.path / array_path, meta, lead, where=f"{self.path}/{array_path}")

    def read_field(self, well: WellRef | str, index: int, level: int = 0) -> zarr.Array:
        """The (t, c, z, y, x) array of one field at a pyramid level (lazy; slice it)."""
        return self._open_array(self.field_path(well, index), str(level))

    def set_channel_windows(self, windows: list[tuple[float, float]], fields: list[str]) -> None:
        """Set omero display windows (start, end) per channel on the given field paths."""

        def update(_path: str, attrs: dict[str, Any]) -> dict[str, Any]:
            ome = dict(attrs["ome"])
            omero = dict(ome["omero"])
            omero["channels"] = [
                dict(ch, window=dict(ch["window"], start=float(lo), end=float(hi)))
                for ch, (lo, hi) in zip(omero["channels"], windows)
            ]
            ome["omero"] = omero
            return {"ome": ome}

        self._update_attrs(list(fields), update)

    # -- labels ---------------------------------------------------------------
    def create_labels(
        self, field_path: str, names: list[str], *, n_t: int, overwrite: bool = False, tile: int | None = None
    ) -> int:
        """Create empty NGFF label images ``names`` under ``<field>/labels/``, same chunking as the image.

        Label arrays are (t, c=1, z=1, y, x) int32 with the image's pyramid levels
        (nearest-neighbour downsampling) and scale transforms; z spans the image's
        whole stack (2-D segmentation of its projection). ``tile``: the plate's chunk
        size (read from the plate's attributes when not given). An existing label image
        of the same name is kept, or replaced (emptied) with ``overwrite``. Returns the
        number of pyramid levels.
        """
        img_ms, (_, _, nz, ny, nx), lg_attrs, present = self._field_for_labels(field_path)
        tile = tile or int(self.hts_attrs.get("tile", 1024))
        existing = list(lg_attrs.get("ome", {}).get("labels", [])) if lg_attrs is not None else []
        nodes: dict[str, Any] = {}
        for name in names:
            if name in existing and name in present and not overwrite:
                continue
            datasets = []
            for level, ds in enumerate(img_ms["datasets"]):
                scale = list(ds["coordinateTransformations"][0]["scale"])
                scale[2] = scale[2] * nz
                datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
                nodes[f"{field_path}/labels/{name}/{level}"] = _array_metadata(
                    (n_t, 1, 1, *_level_yx((ny, nx), level)), tile, "int32"
                )
            nodes[f"{field_path}/labels/{name}"] = GroupMetadata(
                attributes={
                    "ome": {
                        "version": NGFF_VERSION,
                        "multiscales": [{"name": name, "axes": img_ms["axes"], "datasets": datasets}],
                        "image-label": {"version": NGFF_VERSION, "source": {"image": "../../"}},
                    }
                }
            )
        listed = existing + [n for n in names if n not in existing]
        labels_attrs = {"ome": {"version": NGFF_VERSION, "labels": listed}}
        if lg_attrs is None:  # a new labels group (naming an existing one here would erase its children)
            nodes[f"{field_path}/labels"] = GroupMetadata(attributes=labels_attrs)
        if nodes:
            self._create_nodes(nodes, overwrite=True)
        if lg_attrs is not None and listed != existing:
            self._update_attrs([f"{field_path}/labels"], lambda _path, _attrs: labels_attrs)
        return len(img_ms["datasets"])

    def _field_for_labels(self, field_path: str) -> tuple[dict[str, Any], tuple[int, ...], dict | None, set[str]]:
        """A field's image multiscales, its level-0 shape, its labels group's attributes (None if it has
        none) and the label groups in it: read from the documents in a local store, else through zarr."""
        if not self.remote:
            fg, level0 = self._local_doc(field_path), self._local_array_meta(f"{field_path}/0")
            if fg is not None and level0 is not None:
                lg = self._local_doc(f"{field_path}/labels")
                folder = self.path / field_path / "labels"
                present = {d.name for d in folder.iterdir() if (d / "zarr.json").is_file()} if lg is not None else set()
                return fg["attributes"]["ome"]["multiscales"][0], tuple(level0.shape), _attrs(lg), present
        fg = self._open_group(field_path, mode="r")
        lg = fg.get("labels")
        present = set(lg.group_keys()) if lg is not None else set()
        return fg.attrs["ome"]["multiscales"][0], fg["0"].shape, dict(lg.attrs) if lg is not None else None, present

    def write_labels(
        self,
        field_path: str,
        labels: dict[str, np.ndarray],
        t: int = 0,
        *,
        levels: int | None = None,
        properties: dict[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        """Write one time point of label images (``name -> 2-D int32``) and their pyramids, concurrently.

        ``levels``: pyramid depth of the label images, the image's (what :meth:`create_labels`
        returned; read from the field's metadata when not given). ``properties``: NGFF ``image-label``
        properties of some of the images (replacing theirs); the others' attributes are
        left as they are.
        """
        if levels is None:
            ms = self._open_group(field_path, mode="r").attrs["ome"]["multiscales"][0]
            levels = len(ms["datasets"])
        writes = []
        for name, lab in labels.items():
            level = lab.astype(np.int32, copy=False)
            for i in range(levels):
                writes.append((f"{field_path}/labels/{name}/{i}", (t, 0, 0), level))
                level = level[::2, ::2]
        self._write_arrays(writes)
        if properties:
            by_path = {f"{field_path}/labels/{name}": props for name, props in properties.items()}

            def update(path: str, attrs: dict[str, Any]) -> dict[str, Any]:
                ome = dict(attrs["ome"])
                ome["image-label"] = dict(ome["image-label"], properties=by_path[path])
                return {"ome": ome}

            self._update_attrs(list(by_path), update)

    def read_labels(self, field_path: str, name: str, level: int = 0) -> zarr.Array:
        """A label image (t, 1, 1, y, x) of one field (lazy)."""
        try:
            return self._open_array(field_path, "labels", name, str(level))
        except Exception:
            raise StoreError(f"{self.path}/{field_path}: no label image {name!r}") from None


def _by_chunk(lead: tuple[int, ...], data: np.ndarray, chunks: tuple[int, ...]):
    """Split ``array[lead] = data`` into ``(selection, value)`` writes of one chunk each.

    Zarr copies a write that spans several chunks into a new fill-valued buffer per chunk;
    a value of exactly one chunk's shape is encoded as it is. Writing a 1024² 3-channel
    field and its pyramid chunk by chunk, with :class:`_ChunkFileStore`, costs 40 instead
    of 62 ms of CPU (``docs/benchmarks.md``, *fifth round*).
    """
    full = data.reshape((1,) * len(lead) + data.shape)
    ends = [i + 1 for i in lead] + list(data.shape)  # the region written, in array coordinates
    starts = [range(i, i + 1) for i in lead] + [range(0, n, c) for n, c in zip(data.shape, chunks[len(lead) :])]
    for corner in itertools.product(*starts):
        sel = tuple(slice(a, min(a + c, end)) for a, c, end in zip(corner, chunks, ends))
        yield sel, full[(slice(0, 1),) * len(lead) + sel[len(lead) :]]


class _ChunkFileStore(LocalStore):
    """A local zarr store that writes chunk files in place, and metadata as zarr does.

    Zarr's ``LocalStore`` writes every file to a temporary name and renames it, and makes
    its directory first: for the 9 chunk files of a 1024² field this cost more CPU than
    the renames protect (8 ms of ~60). A chunk needs no atomic write here: a field (or a
    label image) counts as stored only once the catalog records it, after all its chunks
    are written, and an interrupted run writes every chunk of an unrecorded field again.
    Metadata documents (``zarr.json``) keep zarr's atomic write.
    """

    async def set(self, key: str, value: Any) -> None:
        if key.rsplit("/", 1)[-1] == "zarr.json":
            return await super().set(key, value)
        if not self._is_open:
            await self._open()
        self._check_writable()
        await asyncio.to_thread(_write_file, self.root / key, value.as_buffer_like())


# -- local fast path ----------------------------------------------------------------------
# Zarr runs every store operation on its event-loop thread and each chunk's encoding and file
# write on a thread pool: a dozen thread hand-offs per field. Between fields those threads sleep
# through the segmentation, and waking them costs more than the work: creating and writing a
# field's two label images took 4-5 ms back to back, 14-20 ms of CPU between 512² fields in a
# segment run. In a local store, the arrays hts makes (little-endian bytes + Blosc, regular
# chunks) are written here on the calling thread instead: zarr's own metadata documents, and
# chunks encoded by the Blosc object zarr itself encodes them with, at the keys zarr names.
# Tests check the files are byte for byte what zarr writes.


def _attrs(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if doc is None else dict(doc.get("attributes", {}))


def _blosc_encoder(meta: Any) -> Any | None:
    """The numcodecs Blosc zarr encodes ``meta``'s chunks with, when the array is stored as hts makes its
    arrays (bytes codec, little-endian or one-byte, then Blosc; a regular chunk grid); else None."""
    from zarr.codecs import BytesCodec
    from zarr.codecs.bytes import Endian
    from zarr.core.chunk_grids import RegularChunkGrid

    codecs = getattr(meta, "codecs", ())
    if len(codecs) != 2 or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[1], BloscCodec):
        return None
    if codecs[0].endian not in (None, Endian.little) or not isinstance(meta.chunk_grid, RegularChunkGrid):
        return None
    return getattr(codecs[1], "_blosc_codec", None)  # zarr's configured encoder (private: absent -> zarr writes)


def _lead(sel: Any) -> tuple[int, ...]:
    """The leading integer indices of a selection (``...``, the whole array: none)."""
    return sel if isinstance(sel, tuple) else ()


def _local_writable(meta: Any, lead: tuple[int, ...]) -> bool:
    """Whether :func:`_write_local_chunks` writes ``array[lead]`` as zarr would: an array stored as hts makes
    them, one chunk deep along the leading indices (a chunk is written whole, never merged)."""
    return _blosc_encoder(meta) is not None and all(c == 1 for c in meta.chunk_grid.chunk_shape[: len(lead)])


def _check_lead(meta: Any, lead: tuple[int, ...], *, where: str) -> None:
    """:class:`StoreError` unless ``lead`` indexes the array's leading axes."""
    if len(lead) > len(meta.shape) or any(not 0 <= i < n for i, n in zip(lead, meta.shape)):
        raise StoreError(f"{where}: index {lead} outside the array's shape {tuple(meta.shape)}")


def _stored_dtype(meta: Any) -> np.dtype:
    """The dtype of the array's chunk bytes (the bytes codec's little-endian layout)."""
    return np.dtype(meta.dtype.to_native_dtype()).newbyteorder("<")


def _write_local_chunks(folder: Path, meta: Any, lead: tuple[int, ...], data: np.ndarray) -> None:
    """``array[lead] = data`` for the local array at ``folder`` (index and shape checked by the caller),
    chunk by chunk, as zarr would store it."""
    chunks = tuple(meta.chunk_grid.chunk_shape)
    dtype = _stored_dtype(meta)
    encoder = _blosc_encoder(meta)
    for s, value in _by_chunk(lead, data, chunks):
        block = np.asarray(value, dtype=dtype)
        if block.shape != chunks:  # an edge chunk is stored whole: the array's fill value beyond its edge
            whole = np.full(chunks, meta.fill_value, dtype=dtype)
            whole[tuple(slice(0, n) for n in block.shape)] = block
            block = whole
        payload = encoder.encode(np.ascontiguousarray(block).reshape(-1).view(np.uint8))
        _write_file(folder / meta.encode_chunk_key(tuple(x.start // c for x, c in zip(s, chunks))), payload)


@functools.lru_cache(maxsize=256)
def _array_meta_from_doc(raw: bytes) -> Any | None:
    """Zarr's metadata of an array document (None if it is not a Zarr v3 array's). Cached by the
    document's bytes: a plate's fields share a handful of them, and parsing one costs ~1 ms."""
    try:
        doc = json.loads(raw)
        if doc.get("node_type") != "array" or doc.get("zarr_format") != 3:
            return None
        return ArrayV3Metadata.from_dict(doc)
    except Exception:  # noqa: BLE001 - not an array this module writes; zarr reports it
        return None


def _check_blosc_header(raw: bytes, nbytes: int) -> None:
    """Raise ValueError unless ``raw`` is a whole Blosc buffer of ``nbytes`` decoded bytes (the Blosc 1
    header: 16 bytes, the decoded and the compressed sizes as little-endian uint32 at 4 and 12)."""
    if len(raw) < 16:
        raise ValueError(f"{len(raw)} bytes, shorter than a Blosc header")
    decoded, _, compressed = struct.unpack_from("<III", raw, 4)
    if compressed != len(raw) or decoded != nbytes:
        raise ValueError(f"{len(raw)} bytes where its header says {compressed} ({decoded} decoded, {nbytes} expected)")


def _read_local_chunks(folder: Path, meta: Any, lead: tuple[int, ...], *, where: str) -> np.ndarray:
    """``array[lead]`` of the local array at ``folder``, read chunk by chunk as zarr would."""
    _check_lead(meta, lead, where=where)
    shape, chunks = tuple(meta.shape), tuple(meta.chunk_grid.chunk_shape)
    stored = _stored_dtype(meta)
    nbytes = stored.itemsize * math.prod(chunks)  # of every decoded chunk (edge chunks are stored whole)
    out = np.full(shape[len(lead) :], meta.fill_value, dtype=np.dtype(meta.dtype.to_native_dtype()))
    decoder = _blosc_encoder(meta)
    rest = [range(0, n, c) for n, c in zip(shape[len(lead) :], chunks[len(lead) :])]
    for corner in itertools.product(*rest):
        coords = tuple(i // c for i, c in zip(lead, chunks)) + tuple(
            a // c for a, c in zip(corner, chunks[len(lead) :])
        )
        try:
            raw = (folder / meta.encode_chunk_key(coords)).read_bytes()
        except FileNotFoundError:  # never written: the fill value
            continue
        try:
            # Blosc decodes a cut-off buffer without complaint (reading past it): check its header first
            _check_blosc_header(raw, nbytes)
            block = np.frombuffer(decoder.decode(raw), dtype=stored).reshape(chunks)
        except Exception as e:  # noqa: BLE001 - a damaged chunk file, named
            raise StoreError(f"{where}: chunk {meta.encode_chunk_key(coords)} cannot be read ({e})") from None
        block = block[tuple(i % c for i, c in zip(lead, chunks))]
        dst = tuple(slice(a, min(a + c, n)) for a, c, n in zip(corner, chunks[len(lead) :], out.shape))
        out[dst] = block[tuple(slice(0, d.stop - d.start) for d in dst)]
    return out


def _write_local_nodes(root: Path, nodes: dict[str, Any], *, replace: list[str]) -> None:
    """Write each node's ``zarr.json`` as zarr serialises it, atomically as zarr's local store does,
    after removing the folders (children included) of the nodes at ``replace``."""
    from zarr.core.buffer import default_buffer_prototype

    for path in replace:
        try:
            shutil.rmtree(root / path)
        except FileNotFoundError:
            pass
        except OSError as e:  # what is left of the old node would show through the new one
            raise StoreError(f"{root / path}: cannot replace it ({e.strerror or e})") from None
    proto = default_buffer_prototype()
    for path, meta in nodes.items():
        doc = root / path / "zarr.json"
        os.makedirs(doc.parent, exist_ok=True)
        tmp = doc.with_name(f".zarr.json.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(meta.to_buffer_dict(proto)["zarr.json"].to_bytes())
        os.replace(tmp, doc)


def _write_file(path: Path, data: Any) -> None:
    try:
        f = open(path, "wb")
    except FileNotFoundError:  # the chunk's first write: make its directories once
        os.makedirs(path.parent, exist_ok=True)  # stats up to the first that exists (pathlib tries mkdir at each)
        f = open(path, "wb")
    with f:
        f.write(data)


def field_shape(description: PlateDescription, *, max_project: bool) -> tuple[int, int, int, int, int]:
    t, c, z, y, x = description.shape
    return (t, c, 1 if max_project else z, y, x)


def _level_yx(yx: tuple[int, ...], level: int) -> tuple[int, int]:
    y, x = yx
    for _ in range(level):
        y, x = (y + 1) // 2, (x + 1) // 2
    return (y, x)


@functools.lru_cache(maxsize=64)
def _array_metadata(shape: tuple[int, ...], tile: int, dtype: str) -> Any:
    """Zarr v3 metadata of a (t, c, z, y, x) array chunked (1, 1, 1, tile, tile), compressed as :data:`COMPRESSION`.

    Made by zarr itself (an array created in memory), so the metadata is exactly what
    ``create_array`` would write; shared by every field of a plate.
    """
    from zarr.storage import MemoryStore

    c = COMPRESSION
    arr = zarr.create_array(
        MemoryStore(),
        shape=shape,
        chunks=(1, 1, 1, min(tile, shape[3]), min(tile, shape[4])),
        dtype=dtype,
        compressors=BloscCodec(cname=c["cname"], clevel=c["clevel"], shuffle=BloscShuffle(c["shuffle"])),
        fill_value=0,
        dimension_names=AXES,
    )
    return arr.metadata


def _multiscales(description: PlateDescription, shape, levels: int) -> list[dict[str, Any]]:
    px, py, pz = description.pixel_size_um
    space_unit = {"unit": "micrometer"} if px else {}
    axes = [
        {"name": "t", "type": "time", **({"unit": "second"} if description.time_interval_s else {})},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", **space_unit},
        {"name": "y", "type": "space", **space_unit},
        {"name": "x", "type": "space", **space_unit},
    ]
    datasets = []
    for level in range(levels):
        f = 2.0**level
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {
                        "type": "scale",
                        "scale": [
                            float(description.time_interval_s or 1.0),
                            1.0,
                            float(pz or 1.0),
                            float(py or 1.0) * f,
                            float(px or 1.0) * f,
                        ],
                    }
                ],
            }
        )
    return [{"name": "image", "axes": axes, "datasets": datasets, "type": "mean"}]


def _omero(channels: list[Channel], dtype: str) -> dict[str, Any]:
    info = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else np.finfo(dtype)
    out = []
    for i, ch in enumerate(channels):
        color = ch.color if ch.color and ch.color != "000000" else _DEFAULT_COLORS[i % len(_DEFAULT_COLORS)]
        out.append(
            {
                "label": ch.name,
                "color": color,
                "active": True,
                "window": {
                    "min": float(info.min),
                    "max": float(info.max),
                    "start": float(info.min),
                    "end": float(info.max),
                },
            }
        )
    return {"channels": out, "rdefs": {"model": "color"}}
