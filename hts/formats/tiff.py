"""Readers for plates exported as folders of single-plane TIFF files.

Every layout shares one core: scan the folder for ``.tif``/``.tiff`` files, parse
each relative path with the layout's regular expression into (plate, well, site,
channel, z, t) tokens, group the files into fields, validate that every field has
every channel, plane and timepoint exactly once, check every file's TIFF header
(one 2-D shape and one dtype across the plate), and read the layout's side files
(ImageXpress ``.HTD``, Harmony ``Index.idx.xml``) for channel names and pixel size.

Layouts recognised by file name (relative to the folder, ``/`` separated):

========================  ===============================================================
``ImageXpressReader``     ``[TimePoint_<t>/][ZStep_<z>/]<plate>_<well>[_s<site>][_w<ch>[GUID]].tif``
``OperaReader``           ``[.../]r<row>c<col>f<field>p<plane>-ch<ch>sk<t>fk<n>fl<n>.tiff``
``CellomicsReader``       ``[.../]<plate>_<well>f<field>d<ch>.tif``
``PatternReader``         a user pattern such as ``'{well}_s{field}_{channel}.tif'``
========================  ===============================================================

Typical use::

    reader = detect_tiff_layout(folder)(folder, plate_wells=384)
    desc = reader.describe()                    # validates names and headers
    pixels = reader.read_field(desc.fields[0], desc)  # (t, c, z, y, x)
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tifffile

from hts.errors import SourceError
from hts.formats.base import Channel, PlateDescription, PlateReader, SourceField
from hts.wells import PLATE_TYPES, WellRef, parse_well, plate_type_for

__all__ = [
    "CellomicsReader",
    "ImageXpressReader",
    "OperaReader",
    "PatternReader",
    "detect_tiff_layout",
]

_TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
_PATTERN_HINT = "--pattern '{well}_s{field}_{channel}.tif'"
_GUID = r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}"


# --------------------------------------------------------------------------- core


@dataclass(frozen=True)
class _Image:
    """One image file with the tokens its name carries (``None``: token absent)."""

    path: Path
    plate: str | None
    well: WellRef
    field: str | None
    channel: str | None
    z: str | None
    t: str | None


@dataclass
class _Metadata:
    """What a layout's side files add to what the file names tell."""

    channels: dict[str, Channel] = dataclasses.field(default_factory=dict)  # by channel token
    pixel_size_um: tuple[float | None, float | None, float | None] = (None, None, None)
    plate_wells: int | None = None
    stage_xy_um: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)  # by file name
    instrument: dict[str, Any] = dataclasses.field(default_factory=dict)


def _tiff_files(folder: Path) -> list[Path]:
    """All TIFF files under ``folder`` (recursively, hidden files skipped), sorted."""
    if not folder.is_dir():
        raise SourceError(f"{folder}: not a folder")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in _TIFF_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _sorted_tokens(tokens: set[str | None]) -> list[str | None]:
    """Tokens in numeric order when all are numbers (``1 < 2 < 10``), else alphabetical."""
    if all(t is not None and t.isdigit() for t in tokens):
        return sorted(tokens, key=lambda t: (int(t), t))  # type: ignore[arg-type]
    return sorted(tokens, key=lambda t: (t is not None, t or ""))


def _well(groups: dict[str, str]) -> WellRef:
    """The well named by a ``well`` token, or by ``row`` (letters or 1-based number) and ``col``."""
    if groups.get("well"):
        return parse_well(groups["well"])
    row, col = groups["row"], groups["col"]
    if not row.isdigit():
        return parse_well(row + col)
    if int(row) < 1 or int(col) < 1:
        raise ValueError(f"row {row} column {col}: numbering starts at 1")
    return WellRef(int(row) - 1, int(col) - 1)


def _check_single_page(tf: tifffile.TiffFile) -> tifffile.TiffPage:
    """The only page of a TIFF: a stack is refused rather than silently cut to its first plane."""
    if (n := len(tf.pages)) != 1:
        raise SourceError(f"{tf.filehandle.path}: holds {n} images; expected one 2-D plane per file")
    return tf.pages[0]  # type: ignore[return-value]


def _header(path: Path) -> tuple[tuple[int, ...], str]:
    """Shape and dtype of a TIFF's single plane, from its header; checks the data is all there."""
    try:
        with tifffile.TiffFile(path) as tf:
            page = _check_single_page(tf)
            if page.dtype is None:
                raise SourceError(f"{path}: unsupported TIFF sample format")
            shape, dtype = tuple(page.shape), np.dtype(page.dtype).name
            end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
            if end > tf.filehandle.size:
                raise SourceError(
                    f"{path}: truncated TIFF (image data ends at byte {end}, file has {tf.filehandle.size})"
                )
    except SourceError:
        raise
    except Exception as e:  # tifffile raises many kinds (TiffFileError, struct.error, IndexError, OSError)
        raise SourceError(f"{path}: not a readable TIFF ({type(e).__name__}: {e})") from e
    if len(shape) != 2:
        raise SourceError(f"{path}: image of shape {shape}; expected a single-channel 2-D plane")
    return shape, dtype


def _read_plane(path: Path, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """Pixels of a single-plane TIFF, checked against the described shape and dtype."""
    try:
        with tifffile.TiffFile(path) as tf:
            arr = _check_single_page(tf).asarray()
    except SourceError:
        raise
    except Exception as e:  # decoding errors come as ValueError, OSError, zlib.error, ...
        raise SourceError(f"{path}: cannot read TIFF pixels ({type(e).__name__}: {e})") from e
    if arr.shape != shape or arr.dtype != dtype:
        raise SourceError(
            f"{path}: image is {'x'.join(map(str, arr.shape))} {arr.dtype.name}, "
            f"expected {'x'.join(map(str, shape))} {dtype.name}"
        )
    return arr


class _TiffFolderReader(PlateReader):
    """Shared scanning, grouping and validation of TIFF-folder layouts.

    Subclasses set ``_regex`` (named groups ``plate``, ``well`` or ``row`` + ``col``,
    ``field``, ``channel``, ``z``, ``t``; matched against the whole relative path),
    ``_channel_prefix`` (channel name = prefix + token) and may override
    :meth:`_skip` and :meth:`_metadata`.

    Parameters
    ----------
    source : str or Path
        The folder of TIFF files (searched recursively; hidden files ignored).
    channel_names : list of str, optional
        Names replacing the detected ones, one per channel in channel order.
    plate : str, optional
        The plate to read when the folder holds several.
    plate_wells : int, optional
        Plate size hint (96, 384 or 1536).
    """

    _regex: ClassVar[re.Pattern[str]]
    _channel_prefix: ClassVar[str] = ""
    _default_channel: ClassVar[str] = "1"  # token of the only channel when names carry none

    @classmethod
    def sniff(cls, path: Path) -> bool:
        """True for a folder where at least half of the TIFF files are named in this layout."""
        try:
            files = _tiff_files(Path(path))
        except SourceError:
            return False
        reader = cls(path)
        files = [p for p in files if not reader._skip(p)]
        hits = sum(reader._parse(p) is not None for p in files)
        return hits > 0 and 2 * hits >= len(files)

    # -- per-layout hooks -----------------------------------------------------

    def _skip(self, path: Path) -> bool:
        """True for files the layout writes but that are no images of the plate (thumbnails)."""
        return False

    def _naming(self) -> str:
        return f"{self.format} naming"

    def _metadata(self, images: list[_Image]) -> _Metadata:
        """Channel names, pixel size, ... from side files; ``images`` are the plate's files."""
        return _Metadata()

    # -- core -----------------------------------------------------------------

    def _parse(self, path: Path) -> _Image | None:
        if self._skip(path):
            return None
        m = self._regex.fullmatch(path.relative_to(self.source).as_posix())
        if m is None:
            return None
        g = {k: v for k, v in m.groupdict().items() if v is not None}
        try:
            well = _well(g)
        except ValueError:
            return None
        channel = g.get("channel", self._default_channel)
        return _Image(path, g.get("plate"), well, g.get("field"), channel, g.get("z"), g.get("t"))

    def _images(self) -> list[_Image]:
        """The parsed image files of the selected plate (only those in the ``only`` option when given:
        ``hts watch`` describes the fields that are complete so far)."""
        files = _tiff_files(self.source)
        only = self.options.get("only")
        if only is not None:
            files = [p for p in files if p.relative_to(self.source).as_posix() in only]
        if not files:
            raise SourceError(f"{self.source}: no TIFF files (.tif/.tiff) in this folder")
        images = [im for p in files if (im := self._parse(p)) is not None]
        if not images:
            example = files[0].relative_to(self.source).as_posix()
            raise SourceError(f"{self.source}: no file matches the {self._naming()} (e.g. {example!r})")
        plates = sorted({im.plate for im in images if im.plate is not None})
        want = self.options.get("plate")
        if want is not None and plates:
            images = [im for im in images if im.plate == want]
            if not images:
                raise SourceError(f"{self.source}: no plate {want!r} here; plates: {', '.join(plates)}")
        elif len(plates) > 1:
            raise SourceError(
                f"{self.source} holds {len(plates)} plates ({', '.join(plates)}); "
                "choose one with the reader option plate= (the folder of one plate, or a --pattern naming it)"
            )
        return images

    def describe(self) -> PlateDescription:
        """Scan names and headers, validate the plate, and describe it (no pixels are read).

        Raises
        ------
        SourceError
            No or unknown files, several plates, a missing or duplicate channel/plane/
            timepoint, a corrupt or truncated file, or files of different shape or dtype.
        """
        images = self._images()
        meta = self._metadata(images)
        chans = _sorted_tokens({im.channel for im in images})
        zs = _sorted_tokens({im.z for im in images})
        ts = _sorted_tokens({im.t for im in images})
        names = self._channel_names(chans, meta)

        def where(well: WellRef, site: str | None, t: str | None, z: str | None) -> tuple[str, str]:
            at = (f" timepoint {t}" if len(ts) > 1 else "") + (f" z {z}" if len(zs) > 1 else "")
            return f"{well.name}{f' field {site}' if site is not None else ''}", at

        grid: dict[tuple, Path] = {}
        sites: dict[WellRef, set[str | None]] = defaultdict(set)
        for im in images:
            key = (im.well, im.field, im.t, im.channel, im.z)
            if key in grid:
                loc, at = where(im.well, im.field, im.t, im.z)
                raise SourceError(f"two files for {loc} channel {names[im.channel]}{at}: {grid[key]} and {im.path}")
            grid[key] = im.path
            sites[im.well].add(im.field)

        fields: list[SourceField] = []
        for well in sorted(sites):
            for index, site in enumerate(_sorted_tokens(sites[well])):
                paths: list[str] = []  # ordered t, c, z
                for t in ts:
                    for c in chans:
                        for z in zs:
                            path = grid.get((well, site, t, c, z))
                            if path is None:
                                loc, at = where(well, site, t, z)
                                have = [names[h] for h in chans if (well, site, t, h, z) in grid]
                                raise SourceError(
                                    f"{loc} lacks channel {names[c]}{at} (have {', '.join(have) or 'none'})"
                                    f" in {self.source}"
                                )
                            paths.append(str(path))
                xy = meta.stage_xy_um.get(Path(paths[0]).name)
                fields.append(SourceField(well, index, tuple(paths), stage_xy_um=xy, name=site))

        files = sorted(grid.values())
        with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
            headers = list(pool.map(_header, files))
        (shape, dtype), _ = Counter(headers).most_common(1)[0]
        for path, (s, d) in zip(files, headers):
            if (s, d) != (shape, dtype):
                raise SourceError(
                    f"{path}: image is {'x'.join(map(str, s))} {d}, "
                    f"expected {'x'.join(map(str, shape))} {dtype} like the other files"
                )

        hint = self.options.get("plate_wells") or meta.plate_wells
        if hint is not None and hint not in PLATE_TYPES:
            raise SourceError(f"plate_wells={hint}: not a standard plate (96, 384 or 1536)")
        plate = images[0].plate
        given = self.options.get("name")
        return PlateDescription(
            name=str(given)
            if given
            else plate
            if plate is not None
            else (self.source.resolve().name or str(self.source)),
            format=self.format,
            plate_type=plate_type_for(sorted(sites), hint=hint),
            channels=[dataclasses.replace(meta.channels.get(c, Channel("")), name=names[c]) for c in chans],
            shape=(len(ts), len(chans), len(zs), shape[0], shape[1]),
            dtype=dtype,
            fields=fields,
            files=files,
            pixel_size_um=meta.pixel_size_um,
            instrument={"layout": self.format, **meta.instrument},
        )

    def _channel_names(self, chans: list[str | None], meta: _Metadata) -> dict[str | None, str]:
        """Channel token -> name: the ``channel_names`` option, side-file names, or prefix + token."""
        override = self.options.get("channel_names")
        if override is not None:
            if len(override) != len(chans):
                raise SourceError(
                    f"{self.source}: {len(override)} channel names given ({', '.join(map(str, override))}) "
                    f"for {len(chans)} channels"
                )
            dup = sorted({str(n) for n in override if [str(x) for x in override].count(str(n)) > 1})
            if dup:
                raise SourceError(f"{self.source}: channel names must differ; given twice: {', '.join(dup)}")
            return {c: str(n) for c, n in zip(chans, override)}
        return {c: meta.channels[c].name if c in meta.channels else f"{self._channel_prefix}{c}" for c in chans}

    def read_field(self, field: SourceField, description: PlateDescription) -> np.ndarray:
        """Pixels of one field as ``(t, c, z, y, x)``; raises SourceError naming a bad file."""
        t, c, z, y, x = description.shape
        if len(field.key) != t * c * z:
            raise SourceError(f"{field.well.name} field {field.index}: {len(field.key)} files, expected {t * c * z}")
        dtype = np.dtype(description.dtype)
        out = np.empty((len(field.key), y, x), dtype=dtype)
        for i, path in enumerate(field.key):
            out[i] = _read_plane(Path(path), (y, x), dtype)
        return out.reshape(description.shape)


# ----------------------------------------------------------------- ImageXpress


def _read_htd(path: Path) -> dict[str, Any]:
    """Key/value lines of a MetaXpress ``.HTD`` file (``"WaveName1", "DAPI"``), values typed."""

    def value(v: str) -> Any:
        v = v.strip().strip('"')
        if v.upper() in ("TRUE", "FALSE"):
            return v.upper() == "TRUE"
        return int(v) if re.fullmatch(r"-?\d+", v) else v

    out: dict[str, Any] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e})") from e
    for line in text.splitlines():
        m = re.match(r'\s*"?([A-Za-z][\w ]*?)"?\s*[,=]\s*(.*?)\s*$', line)
        if m and not m[1].startswith(("WellsSelection", "SiteSelection")):
            values = [value(v) for v in re.findall(r'"[^"]*"|[^,]+', m[2]) if v.strip()]
            out[m[1]] = values[0] if len(values) == 1 else values
    return out


class ImageXpressReader(_TiffFolderReader):
    """Molecular Devices ImageXpress / MetaXpress export.

    Files ``[TimePoint_<t>/][ZStep_<z>/]<plate>_<well>[_s<site>][_w<channel>[<GUID>]].tif``
    (``_s`` absent with one site, ``_w`` absent with one channel; thumbnails skipped).
    Channel names come from the plate's ``.HTD`` file (``WaveName<N>``) when present,
    else ``w1``, ``w2``, ...; the plate size from its ``XWells`` × ``YWells``, the pixel
    size from the MetaMorph ``spatial-calibration-x`` tag of the first image.
    """

    format = "imagexpress"
    _channel_prefix = "w"
    _regex = re.compile(
        r"(?:TimePoint_(?P<t>\d+)/)?(?:ZStep_(?P<z>\d+)/)?"
        r"(?P<plate>[^/]+?)_(?P<well>[A-Z]{1,2}\d{1,2})(?:_s(?P<field>\d+))?"
        rf"(?:_w(?P<channel>\d+)(?:{_GUID})?)?\.tiff?",
        re.IGNORECASE,
    )

    def _skip(self, path: Path) -> bool:
        return "_thumb" in path.name.lower()

    def _metadata(self, images: list[_Image]) -> _Metadata:
        meta = _Metadata(instrument={"vendor": "Molecular Devices", "software": "MetaXpress"})
        htds = sorted(p for p in self.source.iterdir() if p.suffix.lower() == ".htd" and p.is_file())
        htd = next((p for p in htds if p.stem == images[0].plate), htds[0] if len(htds) == 1 else None)
        if htd is not None:
            info = _read_htd(htd)
            meta.instrument["htd"] = {"file": htd.name, **info}
            for key, val in info.items():
                if (m := re.fullmatch(r"WaveName(\d+)", key)) and val != "":
                    meta.channels[m[1]] = Channel(str(val))
            wells = info.get("XWells"), info.get("YWells")
            if all(isinstance(w, int) for w in wells) and wells[0] * wells[1] in PLATE_TYPES:
                meta.plate_wells = wells[0] * wells[1]
        try:  # MetaMorph-style XML description; optional, the header check reports bad files
            with tifffile.TiffFile(images[0].path) as tf:
                desc = tf.pages[0].description or ""
        except Exception:
            desc = ""
        props = dict(re.findall(r'<prop id="([^"]+)"[^>]*?value="([^"]*)"', desc))
        if props.get("spatial-calibration-units", "").lower() in ("um", "µm", "micron", "microns"):
            try:
                sx, sy = float(props["spatial-calibration-x"]), float(props["spatial-calibration-y"])
                meta.pixel_size_um = (sx, sy, None)
            except (KeyError, ValueError):
                pass
        if props.get("_MagSetting_"):
            meta.instrument["objective"] = props["_MagSetting_"]
        return meta


# ----------------------------------------------------------------------- Opera


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _um(el: ET.Element | None) -> float | None:
    """A length element (``Unit="m"`` by default, as Harmony writes) in micrometres."""
    if el is None or not (el.text or "").strip():
        return None
    scale = {"m": 1e6, "mm": 1e3, "um": 1.0, "µm": 1.0, "nm": 1e-3}.get(el.get("Unit", "m"), 1e6)
    try:
        return float(el.text) * scale  # type: ignore[arg-type]
    except ValueError:
        return None


def _number(el: ET.Element | None) -> float | None:
    try:
        return float(el.text) if el is not None and el.text else None  # type: ignore[arg-type]
    except ValueError:
        return None


class OperaReader(_TiffFolderReader):
    """PerkinElmer/Revvity Opera Phenix / Operetta (Harmony export).

    Files ``r<row>c<col>f<field>p<plane>-ch<channel>sk<timepoint>fk<n>fl<n>.tiff`` in the
    folder or a subfolder. An ``Index.idx.xml`` (or ``Index.xml``) beside the images
    gives channel names (``ChannelName``), wavelengths, pixel size (``ImageResolutionX``,
    metres), plane spacing, field positions (``PositionX``/``PositionY`` as written, in µm)
    and objective; else channels are ``ch1``,
    ``ch2``, .... The plate is named after the folder.
    """

    format = "opera"
    _channel_prefix = "ch"
    _regex = re.compile(
        r"(?:.*/)?r(?P<row>\d{1,2})c(?P<col>\d{1,2})f(?P<field>\d+)p(?P<z>\d+)"
        r"-ch(?P<channel>\d+)sk(?P<t>\d+)fk\d+fl\d+\.tiff?",
        re.IGNORECASE,
    )
    _KEYS = ("InstrumentType", "PlateID", "PlateName", "PlateTypeName", "PlateRows", "PlateColumns",
             "ObjectiveMagnification", "ObjectiveNA", "AcquisitionType")  # fmt: skip

    def _metadata(self, images: list[_Image]) -> _Metadata:
        meta = _Metadata(instrument={"vendor": "PerkinElmer"})
        folders = [self.source, *sorted({im.path.parent for im in images})]
        index = next((d / n for d in folders for n in ("Index.idx.xml", "Index.xml") if (d / n).is_file()), None)
        if index is None:
            return meta
        try:
            root = ET.parse(index).getroot()
        except (ET.ParseError, OSError) as e:
            raise SourceError(f"{index}: unreadable Harmony index ({e})") from e
        meta.instrument["index"] = str(index.relative_to(self.source))
        plane_z: dict[str, float] = {}
        for el in root.iter():
            kids = {_local(k.tag): k for k in el}
            text = {k: (v.text or "").strip() for k, v in kids.items()}
            channel = el.get("ChannelID") or text.get("ChannelID")
            if text.get("ChannelName") and channel and channel not in meta.channels:
                meta.channels[channel] = Channel(
                    text["ChannelName"],
                    emission_nm=_number(kids.get("MainEmissionWavelength")),
                    excitation_nm=_number(kids.get("MainExcitationWavelength")),
                )
            if meta.pixel_size_um[0] is None and "ImageResolutionX" in kids:
                x, y = _um(kids["ImageResolutionX"]), _um(kids.get("ImageResolutionY"))
                meta.pixel_size_um = (x, y if y is not None else x, None)
            if text.get("URL") and "PositionX" in kids and "PositionY" in kids:
                x, y = _um(kids["PositionX"]), _um(kids["PositionY"])
                if x is not None and y is not None:
                    meta.stage_xy_um[Path(text["URL"]).name] = (x, y)
            if text.get("PlaneID") and "PositionZ" in kids and (z := _um(kids["PositionZ"])) is not None:
                plane_z.setdefault(text["PlaneID"], z)
            for key in self._KEYS:
                if text.get(key) and key not in meta.instrument:
                    val = text[key]
                    meta.instrument[key] = int(val) if val.isdigit() else val
        if len(plane_z) > 1:
            zs = [plane_z[p] for p in _sorted_tokens(set(plane_z))]  # type: ignore[index]
            meta.pixel_size_um = (*meta.pixel_size_um[:2], round(abs(zs[1] - zs[0]), 6))
        rows, cols = meta.instrument.get("PlateRows"), meta.instrument.get("PlateColumns")
        if isinstance(rows, int) and isinstance(cols, int) and rows * cols in PLATE_TYPES:
            meta.plate_wells = rows * cols
        return meta


# -------------------------------------------------------------------- Cellomics


class CellomicsReader(_TiffFolderReader):
    """Thermo Fisher Cellomics ArrayScan: ``<plate>_<well>f<field>d<channel>.tif``.

    The plate is everything before the last ``_``; channels are named ``d0``, ``d1``, ....
    """

    format = "cellomics"
    _channel_prefix = "d"
    _regex = re.compile(
        r"(?:.*/)?(?P<plate>[^/]+)_(?P<well>[A-Z]{1,2}\d{2})f(?P<field>\d+)d(?P<channel>\d+)\.tiff?",
        re.IGNORECASE,
    )

    def _metadata(self, images: list[_Image]) -> _Metadata:
        return _Metadata(instrument={"vendor": "Thermo Fisher Scientific", "software": "Cellomics ArrayScan"})


# ---------------------------------------------------------------------- Pattern

_PLACEHOLDERS = {
    "plate": r"[^/]+?",
    "well": r"[A-Za-z]{1,2}\d{1,2}",
    "row": r"[A-Za-z]{1,2}|\d{1,2}",
    "col": r"\d{1,2}",
    "field": r"[^/]+?",
    "channel": r"[^/]+?",
    "z": r"[^/]+?",
    "t": r"[^/]+?",
}


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    """Translate ``'{plate}/{row}{col}-{field}-{channel}.tiff'`` into an anchored regex.

    A placeholder used twice must match the same text both times; ``*`` matches
    anything within one path component.
    """
    parts, seen = [], set()
    for part in re.split(r"(\{[^{}]*\}|\*)", pattern):
        if part == "*":
            parts.append(r"[^/]*?")
        elif part.startswith("{") and part.endswith("}") and len(part) > 1:
            name = {"column": "col"}.get(part[1:-1], part[1:-1])
            if name not in _PLACEHOLDERS:
                raise SourceError(
                    f"pattern {pattern!r}: unknown placeholder {part}; "
                    "use {plate} {well} {row} {col} {field} {channel} {z} {t} or *"
                )
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>{_PLACEHOLDERS[name]})")
            seen.add(name)
        elif "{" in part or "}" in part:
            raise SourceError(f"pattern {pattern!r}: unbalanced brace in {part!r}")
        else:
            parts.append(re.escape(part))
    if "well" not in seen and not {"row", "col"} <= seen:
        raise SourceError(f"pattern {pattern!r} names no well: use {{well}} or {{row}} and {{col}}")
    return re.compile("".join(parts))


class PatternReader(_TiffFolderReader):
    """Any folder of TIFFs named by a user pattern (option ``pattern=``).

    Placeholders ``{plate}`` ``{well}`` ``{row}`` ``{col}``/``{column}`` ``{field}``
    ``{channel}`` ``{z}`` ``{t}`` and the wildcard ``*`` are matched against each
    file's path relative to the folder (``/`` separated); other files are ignored.
    Channels are named by their token (a single channel without ``{channel}``: ``c1``)
    and ordered numerically when all tokens are numbers, else alphabetically.

    Examples
    --------
    A folder ``P1/`` of files named ``<well>-<site>-<channel>.tiff``:

    >>> import numpy as np, tempfile, tifffile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = pathlib.Path(tmp.name)
    >>> (root / "P1").mkdir()
    >>> for name in ["B3-x1-DAPI", "B3-x1-GFP", "B3-x2-DAPI", "B3-x2-GFP", "C10-x1-DAPI", "C10-x1-GFP"]:
    ...     tifffile.imwrite(root / "P1" / f"{name}.tiff", np.zeros((8, 8), "uint16"))
    >>> reader = PatternReader(root, pattern="{plate}/{row}{col}-{field}-{channel}.tiff")
    >>> plate = reader.describe()
    >>> plate.name, [w.name for w in plate.wells], [c.name for c in plate.channels]
    ('P1', ['B03', 'C10'], ['DAPI', 'GFP'])
    >>> [(f.well.name, f.index, f.name) for f in plate.fields]
    [('B03', 0, 'x1'), ('B03', 1, 'x2'), ('C10', 0, 'x1')]
    >>> plate.shape  # per field: t, c, z, y, x
    (1, 2, 1, 8, 8)

    The wildcard ``*`` matches a token without naming it, so here the two sites of B03
    can no longer be told apart:

    >>> PatternReader(root, pattern="{plate}/{row}{col}-*-{channel}.tiff").describe()
    Traceback (most recent call last):
    ...
    hts.errors.SourceError: two files for B03 channel DAPI: ...
    >>> tmp.cleanup()
    """

    format = "pattern"
    _default_channel = "c1"

    def __init__(self, source: str | Path, **options: Any):
        super().__init__(source, **options)
        if not options.get("pattern"):
            raise SourceError(f"the pattern reader needs a pattern, e.g. {_PATTERN_HINT}")
        self._regex = _compile_pattern(str(options["pattern"]))  # type: ignore[misc]

    @classmethod
    def sniff(cls, path: Path) -> bool:
        """Always False: a pattern is chosen by the user, never detected."""
        return False

    def _naming(self) -> str:
        return f"pattern {self.options['pattern']!r}"

    def _metadata(self, images: list[_Image]) -> _Metadata:
        return _Metadata(instrument={"pattern": self.options["pattern"]})


# -------------------------------------------------------------------- detection

_LAYOUTS: tuple[type[_TiffFolderReader], ...] = (ImageXpressReader, OperaReader, CellomicsReader)


def detect_tiff_layout(folder: Path) -> type[PlateReader]:
    """The known layout whose naming matches the most TIFF files in ``folder``.

    Parameters
    ----------
    folder : Path
        A folder of TIFF files (searched recursively).

    Returns
    -------
    type[PlateReader]
        :class:`ImageXpressReader`, :class:`OperaReader` or :class:`CellomicsReader`.

    Raises
    ------
    SourceError
        When the folder holds no TIFF file, or no file matches a known layout.
    """
    folder = Path(folder)
    files = _tiff_files(folder)
    if not files:
        raise SourceError(f"{folder}: no TIFF files (.tif/.tiff) in this folder")
    best, layout = 0, _LAYOUTS[0]
    for cls in _LAYOUTS:  # ties go to the layout listed first
        reader = cls(folder)
        if (hits := sum(reader._parse(p) is not None for p in files)) > best:
            best, layout = hits, cls
    if best == 0:
        example = files[0].relative_to(folder).as_posix()
        raise SourceError(
            f"{folder}: file names such as {example!r} match no known layout "
            f"(ImageXpress, Opera/Operetta, Cellomics); describe them with {_PATTERN_HINT}"
        )
    return layout
