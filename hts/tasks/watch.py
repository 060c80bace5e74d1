"""``hts watch``: analyse a TIFF-folder plate while the imager is still writing it.

Every ``poll_s`` seconds the folder is listed (polling, so network shares work). A field
is taken when it is complete:

- every channel / Z plane / time point of the plate is there: the channels the vendor's
  side file names (``.HTD``, ``Index.idx.xml``) or ``channels``, else those seen so far in
  any field, once the imager has moved on (a file of another field is newer than all of
  this field's files);
- each file is finished: its size and modification time unchanged across ``stable_polls``
  listings and its TIFF header decodes. A file that stays undecodable is reported once,
  and its field is skipped; the run goes on;
- the fields before it in its well are taken (field numbers follow site order, as a batch
  ingest numbers them).

Complete fields go through the same code as ``hts ingest`` (:func:`hts.tasks.ingest.ingest`
with ``grow``: new wells and fields are added to the plate) and ``hts segment`` (a run
covers the new fields as they come) on one Dask cluster kept for the whole watch. After
each round, fields QC flags (focus, saturation, empty) and, once 3 wells of each control
are in, the controls' Z' are reported. Everything the watch says is also a row of the
catalog's ``watch_events``.

It ends when the plate is complete (every well of the platemap with ``fields`` fields,
``fields`` from the first finished well when not given), after ``idle_minutes`` without a
new file, or on Ctrl-C / ``stop``. All of its state is in the folder and the catalog, so a
stopped (even killed) watch started again picks up where it was, and the plate ends as a
batch ``ingest`` + ``segment`` of the finished folder makes it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from hts.config import Workspace
from hts.errors import SourceError
from hts.formats import open_plate

__all__ = ["WatchOptions", "WatchReport", "watch"]

EventFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class WatchOptions:
    """What ``hts watch`` does with the fields (see the module notes for when a field is taken)."""

    engines: tuple[str, ...] = ("classic",)
    params: dict[str, Any] | None = None  # engine parameters, for every engine
    pixel_size_um: float | None = None
    platemap: Path | None = None
    fields: int | None = None  # fields per well of the finished plate
    channels: int | None = None  # channels per field, when no vendor file names them
    planes: int | None = None  # Z planes per field (Z-stacks: the watch must know how many to wait for)
    timepoints: int | None = None  # time points per field (time-lapse plates)
    format: str | None = None
    pattern: str | None = None
    name: str | None = None
    plate_wells: int | None = None
    poll_s: float = 5.0
    stable_polls: int = 2
    idle_minutes: float | None = 30.0
    metric: str = "cell_count"
    features: bool = True


@dataclass
class WatchReport:
    plate: str | None
    plate_id: str | None
    fields_ingested: int
    fields_segmented: int
    rounds: int
    ended: str  # complete | idle | stopped
    skipped: list[str] = field(default_factory=list)  # files that stayed broken
    z_prime: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Files:
    """The folder's TIFF files and which of them are finished (size stable, header decodes)."""

    def __init__(self, folder: Path, stable_polls: int):
        self.folder = folder
        self.stable_polls = stable_polls
        self.seen: dict[str, tuple[int, int, int]] = {}  # rel -> (size, mtime_ns, polls unchanged)
        self.decoded: set[str] = set()
        self.bad: dict[str, int] = {}  # rel -> polls it failed to decode while stable
        self.broken: set[str] = set()
        self.last_change = time.monotonic()

    def scan(self) -> None:
        from hts.formats.tiff import _tiff_files

        now: dict[str, tuple[int, int, int]] = {}
        for p in _tiff_files(self.folder):
            try:
                st = p.stat()
            except FileNotFoundError:  # removed between listing and stat
                continue
            rel = p.relative_to(self.folder).as_posix()
            size, mtime = st.st_size, st.st_mtime_ns
            old = self.seen.get(rel)
            same = old is not None and old[:2] == (size, mtime)
            now[rel] = (size, mtime, old[2] + 1 if same else 0)
            if not same:
                self.last_change = time.monotonic()
                self.decoded.discard(rel)
                self.bad.pop(rel, None)
                self.broken.discard(rel)  # written again (a stalled copy that resumed): judged afresh
        self.seen = now

    def finished(self, rel: str) -> bool:
        """Stable for ``stable_polls`` listings and decodable; a file that stays broken is given up on."""
        size, _, polls = self.seen.get(rel, (0, 0, 0))
        if size == 0 or polls < self.stable_polls - 1 or rel in self.broken:
            return False
        if rel in self.decoded:
            return True
        from hts.formats.tiff import _header

        try:
            _header(self.folder / rel)
        except Exception:  # noqa: BLE001 - any decoding failure: not finished (yet)
            self.bad[rel] = self.bad.get(rel, 0) + 1
            if self.bad[rel] >= 3:
                self.broken.add(rel)
            return False
        self.decoded.add(rel)
        return True

    def mtime(self, rel: str) -> int:
        return self.seen[rel][1]


def _expected_wells(platemap: Path | None) -> list[str] | None:
    if platemap is None:
        return None
    from hts.catalog.platemap import read_platemap

    rows = read_platemap(platemap)
    return sorted({r["well"] for r in rows})  # empty wells too: imagers image them, batch ingest keeps them


def _record(workspace: Workspace, plate_id: str | None, events: list[dict[str, Any]]) -> None:
    if not events or plate_id is None:
        return
    t = pa.table({
        "plate_id": [plate_id] * len(events), "kind": [e["kind"] for e in events],
        "well": [e.get("well") for e in events], "field_index": pa.array([e.get("field_index") for e in events], pa.int32()),
        "message": [e["message"] for e in events], "data": [json.dumps(e.get("data")) for e in events],
    })  # fmt: skip
    workspace.catalog.append("watch_events", t)


def watch(
    folder: str | Path,
    *,
    workspace: Workspace,
    options: WatchOptions = WatchOptions(),
    on_event: EventFn | None = None,
    stop: threading.Event | None = None,
    workers: int | None = None,
) -> WatchReport:
    """Follow ``folder`` until the plate is complete, idle, or stopped; see the module notes."""
    from hts.orchestrate.dask import dask_client

    t0 = time.perf_counter()
    folder = Path(folder).expanduser().resolve()
    if folder.is_file():
        raise SourceError(
            f"{folder}: hts watch follows a folder of TIFF files as an imager writes them; a single file "
            "(ND2) is ingested once the acquisition has finished: hts ingest"
        )
    if not folder.is_dir():
        raise SourceError(f"{folder}: no such folder to watch")
    if options.poll_s <= 0 or options.stable_polls < 1:
        raise SourceError("--poll must be > 0 seconds and the stability checks at least 1")
    expected_wells = _expected_wells(options.platemap)
    if expected_wells and options.plate_wells is None:
        # the plate's format from the platemap's wells (as a batch ingest guesses it from all wells imaged),
        # not from the few wells imaged so far
        from hts.wells import parse_well, plate_type_for

        options = dataclasses.replace(
            options, plate_wells=plate_type_for([parse_well(w) for w in expected_wells]).wells
        )
    stop = stop or threading.Event()
    state = _State(workspace, folder, options, on_event, expected_wells)
    with dask_client(workspace.scheduler, workers=workers) as client:  # one cluster (or client) for every round
        ws = workspace if client is None else dataclasses.replace(workspace, scheduler=client.scheduler.address)
        state.workspace = ws
        while True:
            state.round()
            if state.complete():
                ended = "complete"
                break
            idle = time.monotonic() - state.files.last_change
            if options.idle_minutes is not None and idle > options.idle_minutes * 60:
                state.stopped = True  # the imager has stopped: a last round takes the fields still open
                state.round()
                ended = "complete" if state.complete() else "idle"
                break
            if stop.wait(options.poll_s):
                ended = "stopped"
                break
    state.finish()
    state.emit("end", f"watch ended ({ended}): {state.n_ingested} fields ingested, {state.n_segmented} segmented")
    state.flush()
    return WatchReport(
        plate=state.plate, plate_id=state.plate_id, fields_ingested=state.n_ingested, fields_segmented=state.n_segmented,
        rounds=state.rounds, ended=ended, skipped=sorted(state.files.broken), z_prime=state.z_prime,
        seconds=round(time.perf_counter() - t0, 1),
    )  # fmt: skip


class _State:
    """One watch: the folder's files, what the catalog holds, and the rounds of ingest + segment."""

    def __init__(self, workspace, folder, options: WatchOptions, on_event, expected_wells):
        self.workspace = workspace
        self.folder = folder
        self.o = options
        self.on_event = on_event
        self.expected_wells = expected_wells
        self.files = _Files(folder, options.stable_polls)
        self.reader = None
        self.plate: str | None = None
        self.plate_id: str | None = None
        self.taken: dict[tuple[str, str | None], list[str]] = {}  # (well, site) -> files, ingested
        self.n_ingested = self.n_segmented = self.rounds = 0
        self.per_well: int | None = options.fields
        self.z_prime: float | None = None
        self.controls = (0, 0)
        self.reported: set[str] = set()
        self.pending_events: list[dict[str, Any]] = []
        self.stopped = False  # set when the folder has been idle long enough to end the watch

    # -- events ---------------------------------------------------------------
    def emit(self, kind: str, message: str, **extra: Any) -> None:
        e = {"kind": kind, "message": message, **extra}
        self.pending_events.append(e)
        if self.on_event is not None:
            self.on_event(e)

    def flush(self) -> None:
        events, self.pending_events = self.pending_events, []
        _record(self.workspace, self.plate_id, events)

    # -- one round -------------------------------------------------------------
    def _open_reader(self) -> bool:
        if self.reader is not None:
            return True
        if not any(self.files.seen):
            return False
        self.reader = open_plate(self.folder, **self._reader_options())
        return True

    def round(self) -> None:
        self.rounds += 1
        self.files.scan()
        for rel in sorted(self.files.broken - self.reported):
            self.reported.add(rel)
            self.emit(
                "broken", f"{rel}: still not a readable TIFF after 3 checks of the settled file; its field is skipped"
            )
        if not self._open_reader():
            return
        new = self._complete_fields()
        if new:
            self._ingest(new)
            self._segment()
            self._checks()
        self.flush()

    def _complete_fields(self) -> dict[tuple[str, str | None], list[str]]:
        """Fields complete now and not taken yet, in the order a batch ingest numbers them."""
        from hts.formats.tiff import _sorted_tokens

        r = self.reader
        parsed = {}
        for rel in self.files.seen:
            im = r._parse(self.folder / rel)
            if im is not None:
                parsed[rel] = im
        if not parsed:
            r._images()  # TIFF files, none named as the layout says: the reader's one-line error
            return {}
        meta_channels = None
        try:
            meta = r._metadata(list(parsed.values()))
            meta_channels = set(meta.channels) or None
        except Exception:  # noqa: BLE001 - a side file still being written: use what the files say
            meta_channels = None
        chans = meta_channels or {im.channel for im in parsed.values()}
        n_c = self.o.channels if self.o.channels is not None and meta_channels is None else len(chans)
        n_z = self.o.planes or len({im.z for im in parsed.values()})
        n_t = self.o.timepoints or len({im.t for im in parsed.values()})
        need = n_c * n_z * n_t
        groups: dict[tuple[str, str | None], list[str]] = {}
        for rel, im in parsed.items():
            groups.setdefault((im.well.name, im.field), []).append(rel)
        newest = {k: max(self.files.mtime(x) for x in v) for k, v in groups.items()}
        moved_on = max(newest.values())
        if self.o.fields is None:  # fields per well: the most any well the imager has left has
            current = max(newest, key=newest.get)[0]
            sites: dict[str, set] = {}
            for w, site in groups:
                sites.setdefault(w, set()).add(site)
            left = [len(v) for w, v in sites.items() if w != current]
            if left:
                self.per_well = max(self.per_well or 0, *left)
        out = {}
        by_well: dict[str, list[str | None]] = {}
        for w, site in groups:
            by_well.setdefault(w, []).append(site)
        for w, sites in by_well.items():
            for site in _sorted_tokens(set(sites)):
                k = (w, site)
                if k in self.taken:
                    continue
                rels = groups[k]
                done = len(rels) >= need and all(self.files.finished(x) for x in rels)
                # without a vendor file or --channels, only a field the imager has left is whole (or the
                # last one, once the folder has been quiet for a while: the imager has stopped)
                if done and meta_channels is None and self.o.channels is None and newest[k] >= moved_on:
                    done = self._quiet()
                if not done:
                    break  # later sites of this well wait for this one (field numbers follow sites)
                out[k] = rels
        return out

    def _reader_options(self) -> dict[str, Any]:
        opts = {"format": self.o.format, "pattern": self.o.pattern}
        opts |= {k: v for k, v in (("plate_wells", self.o.plate_wells), ("name", self.o.name)) if v}
        return opts

    def finish(self) -> None:
        """The plate-wide steps a growing ingest leaves to the end: acquisition checksum, display windows."""
        if self.plate_id is None or not self.taken:
            return
        from hts.tasks.ingest import finish_growing

        only = frozenset(x for v in self.taken.values() for x in v)
        finish_growing(self.folder, workspace=self.workspace, only=only, **self._reader_options())

    def _quiet(self) -> bool:
        """No file new or changed for 3 polls (at least 10 s): the imager is not writing."""
        return self.stopped or time.monotonic() - self.files.last_change >= max(3 * self.o.poll_s, 10.0)

    def _ingest(self, new: dict[tuple[str, str | None], list[str]]) -> None:
        from hts.tasks.ingest import ingest

        only = frozenset(x for v in [*self.taken.values(), *new.values()] for x in v)
        opts = self._reader_options()
        rep = ingest(self.folder, workspace=self.workspace, reader=opts.pop("format"), grow=True, only=only, **opts)
        first = self.plate_id is None
        self.plate, self.plate_id = rep.name, rep.plate_id
        if first:
            self._adopt()
            rec = self.workspace.catalog.find_plate(self.plate_id)
            if rec.pixel_size_um[0] is None and self.o.pixel_size_um is None:
                raise SourceError(
                    f"plate {rec.name}: its files give no pixel size; pass --pixel-size (a size estimated from the "
                    "first fields could differ from the one the finished plate gives, and so would the cells)"
                )
        known_wells = {w for w, _ in self.taken}
        if self.o.platemap is not None and (first or {w for w, _ in new} - known_wells):
            from hts.catalog.platemap import annotate

            cat = self.workspace.catalog  # again as wells arrive: the platemap's rows of the wells imaged so far
            annotate(cat, cat.find_plate(self.plate_id), self.o.platemap, imaged_only=True)
        self.taken.update(new)
        self.n_ingested += rep.fields_written
        wells = sorted({w for w, _ in new})
        kept = len(new) - rep.fields_written  # a restarted watch finds them in the plate already
        note = f"; {kept} were already in the plate" if kept > 0 else ""
        self.emit("ingested", f"ingested {rep.fields_written} field(s) in {', '.join(wells)}{note} ({len(self.taken)} so far)",
                  data={"fields": [f"{w}/{s}" for w, s in new]})  # fmt: skip

    def _adopt(self) -> None:
        """A watch started again: the fields the plate already holds are taken."""
        rows = self.workspace.catalog.query(
            "SELECT well, source_name, source_key FROM fields WHERE plate_id = ? AND status = 'complete'",
            [self.plate_id],
        )
        for r in rows:
            keys = json.loads(r["source_key"])
            self.taken[(r["well"], r["source_name"])] = [Path(k).relative_to(self.folder.resolve()).as_posix()
                                                         if Path(k).is_absolute() else k for k in keys]  # fmt: skip

    def _segment(self) -> None:
        from hts.tasks.segment import SegmentOptions, segment

        for engine in self.o.engines:
            opts = SegmentOptions(params=self.o.params, pixel_size_um=self.o.pixel_size_um)
            (rep,) = segment([self.plate_id], engine=engine, workspace=self.workspace, options=opts,
                             features=self.o.features)  # fmt: skip
            self.n_segmented += rep.fields_segmented
            self.emit("segmented", f"{engine}: run {rep.run_id[:8]} {rep.status}; {rep.cells} cells in the catalog",
                      data={"run_id": rep.run_id})  # fmt: skip

    def _checks(self) -> None:
        """Fields newly flagged by QC; the controls' Z' once 3 wells of each are in."""
        cat = self.workspace.catalog
        rows = cat.query(
            "SELECT well, field_index, flags FROM field_qc WHERE plate_id = ? AND len(flags) > 0", [self.plate_id]
        )
        for r in rows:
            key = f"qc:{r['well']}/{r['field_index']}"
            if key not in self.reported:
                self.reported.add(key)
                self.emit("flagged", f"field {r['well']}/{r['field_index']} flagged: {', '.join(r['flags'])}",
                          well=r["well"], field_index=r["field_index"])  # fmt: skip
        from hts.catalog import runs as runs_db
        from hts.tasks.qc import run_qc

        runs = runs_db.current_runs(cat, self.plate_id)
        if not runs:
            return
        r = runs[0]
        qc = run_qc(cat, self.plate or "", r.run_id, r.engine, self.o.metric)
        counts = (qc.positive["wells"], qc.negative["wells"])
        if min(counts) >= 3 and counts != self.controls and qc.z_prime == qc.z_prime:
            self.controls = counts
            self.z_prime = qc.z_prime
            self.emit("zprime", f"Z' of {self.o.metric} = {qc.z_prime:.3f} ({qc.quality}) from {counts[0]} positive "
                      f"and {counts[1]} negative control wells", data={"z_prime": qc.z_prime})  # fmt: skip

    def complete(self) -> bool:
        if self.expected_wells is None or self.per_well is None:
            return False
        have: dict[str, int] = {}
        for w, _ in self.taken:
            have[w] = have.get(w, 0) + 1
        return all(have.get(w, 0) >= self.per_well for w in self.expected_wells)
