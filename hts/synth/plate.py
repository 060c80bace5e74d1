"""Whole synthetic plates on disk, in the acquisition formats hts reads.

:func:`make_plate` renders every field of every well of a :class:`PlateDesign` with
:func:`hts.synth.synth_field` (the well's treatment from a dose-response
platemap) and writes it as

``"nd2"``
    one Nikon ``<out>/<name>.nd2`` file (via :mod:`hts.synth.nd2_writer`), XY
    positions named ``A01``, ``A01#2``... (or unnamed) at SBS stage coordinates,
    Z and time loops when asked;
``"imagexpress"``
    ``<out>/[TimePoint_<t>/][ZStep_<z>/]<name>_<well>_s<field+1>_w<c+1>.tif`` and a
    MetaXpress ``<out>/<name>.HTD`` naming the channels (``"WaveName1", "DAPI"``);
    pixel size in each TIFF's MetaMorph description;
``"opera"``
    ``<out>/r<row>c<col>f<field+1>p<z+1>-ch<c+1>sk<t+1>fk1fl1.tiff`` (two-digit
    row, column, field and plane) and a Harmony ``<out>/Index.idx.xml`` with
    channel names, pixel size and positions;
``"cellomics"``
    ``<out>/<name>_<well>f<field:02d>d<c>.tif`` (no Z or time in this naming).

Beside the images: ``<out>/platemap.csv`` and, with ``masks=True``, the
ground truth ``<out>/truth/<well>_f<field>_nuclei.tif`` and ``..._cells.tif``
(field 0-based; for time series the later time points as
``<well>_f<field>_t<t>_nuclei.tif``).

Frames are rendered one field at a time and written at once, so memory stays
flat whatever the plate size. Every random choice derives from ``seed``, the
well, the field, the time point and the plane, so the same call writes
byte-identical files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from hts.formats.base import Channel
from hts.synth.field import _expose, _Scene, _scene, channel_kind
from hts.synth.platemap import dose_of, dose_response_layout, write_platemap_csv
from hts.wells import PLATE_TYPES, PlateType, WellRef, parse_well, parse_well_range

#: Largest side of a synthetic field (a 16384² uint16 field is 512 MiB per channel).
MAX_SIDE = 16384

__all__ = ["FORMATS", "PlateDesign", "SynthPlate", "make_plate", "stage_position_um"]

FORMATS = ("nd2", "imagexpress", "opera", "cellomics")

#: Stage coordinates of well A01's centre on an SBS plate (µm).
A01_XY_UM = (14_380.0, 11_240.0)
_DEPTH_OF_FIELD_UM = 2.0  # one unit of synth_field's ``defocus``
_FOCUS_Z_UM = 4_200.0

# excitation nm, emission nm, display colour, by channel-name prefix (lower case)
_CHANNEL_INFO: tuple[tuple[str, float | None, float | None, str], ...] = (
    ("dapi", 358.0, 461.0, "0000FF"),
    ("hoechst", 350.0, 461.0, "0000FF"),
    ("gfp", 488.0, 510.0, "00FF00"),
    ("fitc", 495.0, 519.0, "00FF00"),
    ("cy3", 550.0, 570.0, "FFA500"),
    ("tritc", 557.0, 576.0, "FF0000"),
    ("actin", 557.0, 576.0, "FF0000"),
    ("cy5", 649.0, 670.0, "FF00FF"),
    ("cyto", 488.0, 510.0, "00FF00"),
)


@dataclass(frozen=True)
class SynthPlate:
    """What :func:`make_plate` wrote.

    Attributes
    ----------
    source : pathlib.Path
        What a reader opens: the ``.nd2`` file, or the folder of TIFF files.
    platemap : pathlib.Path
        The platemap CSV.
    truth_dir : pathlib.Path or None
        Folder of ground-truth masks, when written.
    wells : list of WellRef
        The wells, in order.
    fields : int
        Fields per well.
    channels : tuple of str
        Channel names, in order.
    shape : tuple of int
        ``(Y, X)`` of a field.
    pixel_size_um : float
        Pixel size in µm.
    format : str
        One of :data:`FORMATS`.
    n_z, n_time : int
        Planes and time points per field.
    name : str
        The plate name.
    plate_type : int
        Wells on the plate (96, 384, ...).
    rows : list of dict
        The platemap rows (see :func:`hts.synth.dose_response_layout`).
    """

    source: Path
    platemap: Path
    truth_dir: Path | None
    wells: list[WellRef]
    fields: int
    channels: tuple[str, ...]
    shape: tuple[int, int]
    pixel_size_um: float
    format: str = "nd2"
    n_z: int = 1
    n_time: int = 1
    name: str = "DEMO-PLATE"
    plate_type: int = 96
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def dose(self, well: WellRef | str) -> float:
        """The normalised dose the well was rendered at."""
        name = (well if isinstance(well, WellRef) else parse_well(well)).name
        return next(dose_of(r) for r in self.rows if r["well"] == name)

    def truth(self, well: WellRef | str, field: int, t: int = 0) -> tuple[Path, Path]:
        """Paths of the (nuclei, cells) ground-truth masks of one field."""
        if self.truth_dir is None:
            raise ValueError("the plate was made without masks (masks=False)")
        name = (well if isinstance(well, WellRef) else parse_well(well)).name
        stem = f"{name}_f{field}" + (f"_t{t}" if t else "")
        return self.truth_dir / f"{stem}_nuclei.tif", self.truth_dir / f"{stem}_cells.tif"


def channel_metadata(name: str) -> Channel:
    """A :class:`~hts.formats.base.Channel` with typical wavelengths and colour for a channel name."""
    low = name.strip().lower()
    if channel_kind(name) == "brightfield":
        return Channel(name, color="FFFFFF")
    for prefix, ex, em, color in _CHANNEL_INFO:
        if low.startswith(prefix):
            return Channel(name, emission_nm=em, excitation_nm=ex, color=color)
    return Channel(name, color="FFFFFF")


def _grid(fields: int) -> tuple[int, int]:
    nx = math.ceil(math.sqrt(fields))
    return nx, math.ceil(fields / nx)


def stage_position_um(
    well: WellRef,
    field: int,
    *,
    fields: int,
    plate: PlateType,
    fov_um: float,
) -> tuple[float, float]:
    """Stage XY (µm) of a field's centre: SBS well centre plus the field's place in a grid inside the well.

    Fields lie on a near-square grid, row by row, spaced by 1.15 field widths
    (at least 300 µm), but never farther than a quarter pitch from the well centre.
    """
    nx, ny = _grid(fields)
    spacing = max(1.15 * fov_um, 300.0)
    if max(nx, ny) > 1:
        spacing = min(spacing, 0.5 * plate.pitch_um / (max(nx, ny) - 1))
    ix, iy = field % nx, field // nx
    x = A01_XY_UM[0] + well.column * plate.pitch_um + (ix - (nx - 1) / 2) * spacing
    y = A01_XY_UM[1] + well.row * plate.pitch_um + (iy - (ny - 1) / 2) * spacing
    return round(x, 3), round(y, 3)


def _derive(seed: int, *parts: int) -> int:
    """A 63-bit seed from ``seed`` and integer parts (stable across runs and platforms)."""
    ss = np.random.SeedSequence([int(seed) % 2**64, *(int(p) for p in parts)])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


class _Renderer:
    """Renders frames of one plate, keeping the last field's scene for its other planes."""

    def __init__(
        self,
        *,
        seed: int,
        shape: tuple[int, int],
        channels: tuple[str, ...],
        doses: Mapping[WellRef, float],
        dtype: str,
        n_z: int,
        z_step_um: float,
        options: Mapping[str, Any],
    ) -> None:
        self.seed = seed
        self.shape = shape
        self.channels = channels
        self.doses = doses
        self.dtype = dtype
        self.n_z = n_z
        self.z_step_um = z_step_um
        self.options = dict(options)
        self._key: tuple[WellRef, int, int] | None = None
        self._scene: _Scene | None = None

    def scene(self, well: WellRef, field: int, t: int) -> _Scene:
        key = (well, field, t)
        if key != self._key or self._scene is None:
            opts = {
                "n_cells": None,
                "nucleus_radius_px": 9.0,
                "cell_radius_px": 22.0,
                "illumination": 0.15,
                "density": 0.5,
                **{k: v for k, v in self.options.items() if k not in ("noise",)},
            }
            self._scene = _scene(
                shape=self.shape,
                seed=_derive(self.seed, well.row, well.column, field, 1),
                channels=self.channels,
                dose=self.doses[well],
                frame=t,
                **opts,
            )
            self._key = key
        return self._scene

    def frame(self, well: WellRef, field: int, t: int, z: int) -> np.ndarray:
        """One ``(C, Y, X)`` frame."""
        scene = self.scene(well, field, t)
        defocus = (z - (self.n_z - 1) / 2) * self.z_step_um / _DEPTH_OF_FIELD_UM
        return _expose(
            scene,
            noise_seed=_derive(self.seed, well.row, well.column, field, t, z, 2),
            noise=float(self.options.get("noise", 1.0)),
            dtype=self.dtype,
            defocus=defocus,
        )


def _write_tiff(path: Path, plane: np.ndarray, pixel_size_um: float, description: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    res = 1e4 / pixel_size_um  # pixels per cm
    tifffile.imwrite(
        path,
        plane,
        photometric="minisblack",
        resolution=(res, res),
        resolutionunit="CENTIMETER",
        description=description,
        metadata=None,
        software="hts.synth",
    )


def _write_mask(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dt = np.uint16 if int(labels.max(initial=0)) <= np.iinfo(np.uint16).max else np.int32
    tifffile.imwrite(path, labels.astype(dt), photometric="minisblack", metadata=None, software="hts.synth")


def _metamorph_description(
    channel: str, c: int, pixel_size_um: float, xy: tuple[float, float], z_um: float, magnification: float
) -> str:
    props = [
        ("Description", "string", "hts synthetic plate"),
        ("spatial-calibration-state", "bool", "on"),
        ("spatial-calibration-x", "float", f"{pixel_size_um:g}"),
        ("spatial-calibration-y", "float", f"{pixel_size_um:g}"),
        ("spatial-calibration-units", "string", "um"),
        ("image-name", "string", f"w{c + 1}"),
        ("_IllumSetting_", "string", channel),
        ("_MagSetting_", "string", f"{magnification:g}X Plan Apo"),
        ("stage-position-x", "float", f"{xy[0]:.3f}"),
        ("stage-position-y", "float", f"{xy[1]:.3f}"),
        ("z-position", "float", f"{z_um:.3f}"),
    ]
    lines = [f'<prop id="{k}" type="{t}" value="{v}"/>' for k, t, v in props]
    return "<MetaData>\n" + "\n".join(lines) + "\n</MetaData>"


def _htd_text(
    name: str, plate: PlateType, wells: Sequence[WellRef], fields: int, channels: Sequence[str], n_z: int, n_time: int
) -> str:
    """A MetaXpress plate description (``.HTD``)."""
    q = lambda s: f'"{s}"'  # noqa: E731
    tf = lambda b: "TRUE" if b else "FALSE"  # noqa: E731
    selected = set(wells)
    nx, ny = _grid(fields)
    lines = [
        '"HTSInfoFile", Version 1.0',
        f'"Description", {q("hts synthetic plate " + name)}',
        '"PlateType", 6',
        f'"TimePoints", {n_time}',
        f'"ZSeries", {tf(n_z > 1)}',
        f'"ZSteps", {n_z}',
        '"ZProjection", FALSE',
        f'"XWells", {plate.columns}',
        f'"YWells", {plate.rows}',
    ]
    for r in range(plate.rows):
        cells = ", ".join(tf(WellRef(r, c) in selected) for c in range(plate.columns))
        lines.append(f'"WellsSelection{r + 1}", {cells}')
    lines += [f'"Sites", {tf(fields > 1)}', f'"XSites", {nx}', f'"YSites", {ny}']
    for iy in range(ny):
        cells = ", ".join(tf(iy * nx + ix < fields) for ix in range(nx))
        lines.append(f'"SiteSelection{iy + 1}", {cells}')
    lines += ['"Waves", TRUE', f'"NWavelengths", {len(channels)}']
    for c, ch in enumerate(channels):
        lines += [f'"WaveName{c + 1}", {q(ch)}', f'"WaveCollect{c + 1}", 1']
    lines += [f'"UniquePlateIdentifier", {q(name)}', '"EndFile"']
    return "\r\n".join(lines) + "\r\n"


def _harmony_index(
    name: str,
    plate: PlateType,
    channels: Sequence[str],
    pixel_size_um: float,
    images: Sequence[dict[str, Any]],
    magnification: float,
    na: float,
) -> bytes:
    """A minimal Harmony ``Index.idx.xml`` (channel map, plate, one entry per image)."""
    ns = "http://www.perkinelmer.com/PEHH/HarmonyV5"
    ET.register_namespace("", ns)

    def sub(parent: ET.Element, tag: str, text: Any = None, **attrs: str) -> ET.Element:
        el = ET.SubElement(parent, f"{{{ns}}}{tag}", attrs)
        if text is not None:
            el.text = str(text)
        return el

    root = ET.Element(f"{{{ns}}}EvaluationInputData", {"Version": "2"})
    sub(root, "User", "hts")
    sub(root, "InstrumentType", "Phenix")
    p = sub(sub(root, "Plates"), "Plate")
    sub(p, "PlateID", name)
    sub(p, "PlateName", name)
    sub(p, "PlateTypeName", f"{plate.wells}well")
    sub(p, "PlateRows", plate.rows)
    sub(p, "PlateColumns", plate.columns)
    entries = sub(sub(root, "Maps"), "Map")
    for c, ch in enumerate(channels):
        meta = channel_metadata(ch)
        e = sub(entries, "Entry", ChannelID=str(c + 1))
        sub(e, "ChannelName", ch)
        sub(e, "ImageResolutionX", f"{pixel_size_um * 1e-6:.6E}", Unit="m")
        sub(e, "ImageResolutionY", f"{pixel_size_um * 1e-6:.6E}", Unit="m")
        sub(e, "ObjectiveMagnification", f"{magnification:g}")
        sub(e, "ObjectiveNA", f"{na:g}")
        if meta.emission_nm is not None:
            sub(e, "MainExcitationWavelength", f"{meta.excitation_nm:g}", Unit="nm")
            sub(e, "MainEmissionWavelength", f"{meta.emission_nm:g}", Unit="nm")
        sub(e, "AcquisitionType", "NonConfocal" if channel_kind(ch) != "brightfield" else "Brightfield")
    imgs = sub(root, "Images")
    for im in images:
        e = sub(imgs, "Image", Version="1")
        sub(e, "id", im["id"])
        sub(e, "URL", im["url"])
        sub(e, "Row", im["row"])
        sub(e, "Col", im["col"])
        sub(e, "FieldID", im["field"])
        sub(e, "PlaneID", im["plane"])
        sub(e, "TimepointID", im["timepoint"])
        sub(e, "ChannelID", im["channel"])
        sub(e, "ChannelName", im["channel_name"])
        sub(e, "PositionX", f"{im['x_um'] * 1e-6:.9E}", Unit="m")
        sub(e, "PositionY", f"{im['y_um'] * 1e-6:.9E}", Unit="m")
        sub(e, "PositionZ", f"{im['z_um'] * 1e-6:.9E}", Unit="m")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _check_name(name: str) -> str:
    if not name or any(ch in name for ch in '/\\:*?"<>|') or name.strip() != name:
        raise ValueError(f"plate name {name!r}: use letters, digits, '-' and '_' only")
    return name


_FIELD_OPTIONS = frozenset({"n_cells", "nucleus_radius_px", "cell_radius_px", "illumination", "noise", "density"})


@dataclass(frozen=True)
class PlateDesign:
    """The design of a synthetic plate: what :func:`make_plate` images, and how it records it.

    Checked when made (also by :func:`dataclasses.replace`); ``channels`` becomes a
    tuple of str and ``shape`` a tuple of int.

    Parameters
    ----------
    format : {"nd2", "imagexpress", "opera", "cellomics"}
        Acquisition format (see the module docstring for the layouts).
    plate_type : int
        Plate size: 6, 12, 24, 48, 96, 384 or 1536 wells.
    wells : str, optional
        Wells to image, as a :func:`hts.wells.parse_well_range` spec (``"A01:B03"``,
        ``"A01,C05"``, ``"B"``); ``None``: the whole plate.
    fields : int
        Fields per well.
    shape : tuple of int
        ``(Y, X)`` of a field in pixels.
    channels : sequence of str
        Channel names (nuclear / cytoplasm / brightfield by name, see
        :func:`hts.synth.field.channel_kind`).
    n_z : int
        Planes per field: a defocus series around the middle plane, ``z_step_um`` apart.
    n_time : int
        Time points: cells drift and bleach slightly from one to the next.
        Not possible with ``"cellomics"`` (nor ``n_z > 1``), whose names have no such token.
    named_positions : bool
        ``"nd2"`` only: name the XY positions ``A01``, ``A01#2``, ... (else leave them
        unnamed, so that readers must map the stage coordinates onto wells).
    name : str
        Plate name (file names, HTD, Harmony index, ND2 file name).
    dtype : str
        Pixel type (``"uint16"``, ``"uint8"``; ``"float32"`` for ND2 and TIFF too).
    pixel_size_um : float
        Pixel size recorded in the files.
    z_step_um, time_interval_s : float
        Plane spacing and time-lapse period recorded in the files.
    field_options : mapping, optional
        Extra :func:`hts.synth.synth_field` arguments for every field
        (``n_cells``, ``nucleus_radius_px``, ``cell_radius_px``, ``illumination``,
        ``noise``, ``density``).

    Raises
    ------
    ValueError
        Unknown format or plate type, wells off the plate, bad sizes, or Z/time with Cellomics.
    """

    format: str = "nd2"
    plate_type: int = 96
    wells: str | None = None
    fields: int = 2
    shape: tuple[int, int] = (512, 512)
    channels: Sequence[str] = ("DAPI", "GFP", "Brightfield")
    n_z: int = 1
    n_time: int = 1
    named_positions: bool = True
    name: str = "DEMO-PLATE"
    dtype: str = "uint16"
    pixel_size_um: float = 0.65
    z_step_um: float = 1.0
    time_interval_s: float = 60.0
    field_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r}: choose one of {', '.join(FORMATS)}")
        if self.plate_type not in PLATE_TYPES:
            raise ValueError(
                f"plate_type {self.plate_type!r}: not a standard plate ({', '.join(map(str, PLATE_TYPES))})"
            )
        _check_name(self.name)
        if self.fields < 1 or self.n_z < 1 or self.n_time < 1:
            raise ValueError(f"fields, n_z and n_time must be >= 1 (got {self.fields}, {self.n_z}, {self.n_time})")
        if self.format == "cellomics" and (self.n_z > 1 or self.n_time > 1):
            raise ValueError("Cellomics file names carry no Z or time point: use n_z=1 and n_time=1")
        channels = tuple(str(c) for c in self.channels)
        if not channels or len(set(channels)) != len(channels):
            raise ValueError(f"channels must be distinct and at least one: {channels}")
        object.__setattr__(self, "channels", channels)
        shape = (int(self.shape[0]), int(self.shape[1]))
        if min(shape) < 8:
            raise ValueError(f"shape {shape} is too small (at least 8 x 8)")
        if max(shape) > MAX_SIDE:
            raise ValueError(f"shape {shape} is too large for a demo field (at most {MAX_SIDE} x {MAX_SIDE})")
        object.__setattr__(self, "shape", shape)
        self.well_list()  # wells on the plate
        unknown = set(self.field_options or {}) - _FIELD_OPTIONS
        if unknown:
            raise ValueError(f"field_options: unknown {', '.join(sorted(unknown))}")

    @property
    def plate(self) -> PlateType:
        """The plate's geometry."""
        return PLATE_TYPES[self.plate_type]

    def well_list(self) -> list[WellRef]:
        """The wells imaged, in order (checked to lie on the plate)."""
        plate = self.plate
        well_list = (
            [WellRef(r, c) for r in range(plate.rows) for c in range(plate.columns)]
            if self.wells is None
            else parse_well_range(self.wells, plate)
        )
        if not well_list:
            raise ValueError(f"wells {self.wells!r} selects no well")
        for w in well_list:
            if w.row >= plate.rows or w.column >= plate.columns:
                raise ValueError(f"well {w.name} is not on a {plate.wells}-well plate")
        return well_list


_DESIGN_FIELDS = tuple(f.name for f in dataclasses.fields(PlateDesign))


def make_plate(
    out: str | os.PathLike[str],
    design: PlateDesign | None = None,
    *,
    seed: int = 0,
    masks: bool = False,
    platemap_rows: Sequence[Mapping[str, Any]] | None = None,
    **changes: Any,
) -> SynthPlate:
    """Write a synthetic screening plate, its platemap and optionally its ground truth.

    Parameters
    ----------
    out : path
        Destination folder (created). TIFF formats write their images straight into it.
    design : PlateDesign, optional
        What to image and how to record it (default ``PlateDesign()``: a whole
        96-well ND2 plate, 2 fields of 512 x 512, DAPI / GFP / Brightfield).
    seed : int
        Seed of the plate; the same arguments give byte-identical files.
    masks : bool
        Also write ground-truth nucleus and cell masks under ``<out>/truth``.
    platemap_rows : sequence of mapping, optional
        The treatments (rows with ``well``, ``role``, ``compound``,
        ``concentration``, ``unit``); by default :func:`hts.synth.dose_response_layout`.
        Wells it does not mention are rendered untreated.
    **changes
        :class:`PlateDesign` fields to change in ``design`` (``format``, ``plate_type``,
        ``wells``, ``fields``, ``shape``, ``channels``, ``n_z``, ``n_time``,
        ``named_positions``, ``name``, ``dtype``, ``pixel_size_um``, ``z_step_um``,
        ``time_interval_s``, ``field_options``; described there), e.g.
        ``make_plate(out, format="opera", wells="A01:B03", fields=1, shape=(256, 256))``.

    Returns
    -------
    SynthPlate
        Where everything went, and what the plate holds.

    Raises
    ------
    ValueError
        Unknown format or plate type, wells off the plate, bad sizes, or Z/time with Cellomics.
    TypeError
        A keyword that is not a :class:`PlateDesign` field.
    """
    unknown = [k for k in changes if k not in _DESIGN_FIELDS]
    if unknown:
        raise TypeError(
            f"make_plate() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"the plate's design fields are: {', '.join(_DESIGN_FIELDS)}"
        )
    design = dataclasses.replace(design, **changes) if design is not None else PlateDesign(**changes)
    well_list = design.well_list()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = (
        [dict(r) for r in platemap_rows] if platemap_rows is not None else dose_response_layout(design.plate, well_list)
    )
    by_well = {parse_well(str(r["well"])): r for r in rows}
    doses = {w: (dose_of(by_well[w]) if w in by_well else 0.0) for w in well_list}
    platemap = write_platemap_csv(rows, out / "platemap.csv")

    writer = _PlateWriter(design, out, well_list, seed=seed, doses=doses, truth_dir=out / "truth" if masks else None)
    source = writer.write_nd2() if design.format == "nd2" else writer.write_tiffs()
    return SynthPlate(
        source=Path(source),
        platemap=platemap,
        truth_dir=writer.truth_dir,
        wells=list(well_list),
        fields=design.fields,
        channels=tuple(design.channels),
        shape=design.shape,
        pixel_size_um=float(design.pixel_size_um),
        format=design.format,
        n_z=design.n_z,
        n_time=design.n_time,
        name=design.name,
        plate_type=design.plate_type,
        rows=rows,
    )


class _PlateWriter:
    """Writes the frames (and truth masks) of one checked :class:`PlateDesign` into ``out``."""

    magnification = 20.0
    na = 0.75

    def __init__(
        self,
        design: PlateDesign,
        out: Path,
        well_list: Sequence[WellRef],
        *,
        seed: int,
        doses: Mapping[WellRef, float],
        truth_dir: Path | None,
    ) -> None:
        self.d = design
        self.out = out
        self.well_list = list(well_list)
        self.plate = design.plate
        self.truth_dir = truth_dir
        self.fov_um = max(design.shape) * design.pixel_size_um
        self.renderer = _Renderer(
            seed=seed,
            shape=design.shape,
            channels=tuple(design.channels),
            doses=doses,
            dtype=design.dtype,
            n_z=design.n_z,
            z_step_um=design.z_step_um,
            options=dict(design.field_options or {}),
        )

    def fields_in_order(self) -> Iterator[tuple[int, WellRef, int]]:
        p = 0
        for w in self.well_list:
            for f in range(self.d.fields):
                yield p, w, f
                p += 1

    def xy(self, w: WellRef, f: int) -> tuple[float, float]:
        return stage_position_um(w, f, fields=self.d.fields, plate=self.plate, fov_um=self.fov_um)

    def z_um(self, w: WellRef, f: int, z: float) -> float:
        x, y = self.xy(w, f)
        focus = _FOCUS_Z_UM + 2e-4 * (x - A01_XY_UM[0]) - 1e-4 * (y - A01_XY_UM[1])  # a slightly tilted plate
        return focus + (z - (self.d.n_z - 1) / 2) * self.d.z_step_um

    def write_truth(self, w: WellRef, f: int, t: int) -> None:
        if self.truth_dir is None:
            return
        scene = self.renderer.scene(w, f, t)
        stem = f"{w.name}_f{f}" + (f"_t{t}" if t else "")
        _write_mask(self.truth_dir / f"{stem}_nuclei.tif", scene.nuclei)
        _write_mask(self.truth_dir / f"{stem}_cells.tif", scene.cells)

    def write_nd2(self) -> Path:
        """One ND2 file of every field (truth masks written as the frames are)."""
        from hts.synth.nd2_writer import Position, write_nd2

        d = self.d
        order = list(self.fields_in_order())
        positions = []
        for _p, w, f in order:
            x, y = self.xy(w, f)
            label = (w.name if f == 0 else f"{w.name}#{f + 1}") if d.named_positions else None
            positions.append(Position(label, x, y, round(self.z_um(w, f, (d.n_z - 1) / 2), 3)))

        def frames(t: int, p: int, z: int) -> np.ndarray:
            _, w, f = order[p]
            if z == 0:
                self.write_truth(w, f, t)
            return self.renderer.frame(w, f, t, z)

        return write_nd2(
            self.out / f"{d.name}.nd2",
            frames,
            positions=positions,
            channels=[channel_metadata(c) for c in d.channels],
            shape_yx=d.shape,
            dtype=d.dtype,
            n_time=d.n_time,
            n_z=d.n_z,
            pixel_size_um=d.pixel_size_um,
            z_step_um=d.z_step_um,
            time_interval_s=d.time_interval_s,
            objective=f"Plan Apo {self.magnification:g}x",
            magnification=self.magnification,
            numerical_aperture=self.na,
        )

    def file_name(self, w: WellRef, f: int, t: int, z: int, c: int) -> str:
        """The image file of one plane of one channel, relative to ``out``."""
        d = self.d
        if d.format == "imagexpress":
            return (
                (f"TimePoint_{t + 1}/" if d.n_time > 1 else "")
                + (f"ZStep_{z + 1}/" if d.n_z > 1 else "")
                + f"{d.name}_{w.name}_s{f + 1}_w{c + 1}.tif"
            )
        if d.format == "opera":
            return f"r{w.row + 1:02d}c{w.column + 1:02d}f{f + 1:02d}p{z + 1:02d}-ch{c + 1}sk{t + 1}fk1fl1.tiff"
        return f"{d.name}_{w.name}f{f:02d}d{c}.tif"  # cellomics

    def write_tiffs(self) -> Path:
        """One TIFF per plane and channel, and the format's side file (HTD, Harmony index)."""
        d = self.d
        index_images: list[dict[str, Any]] = []
        for _p, w, f in self.fields_in_order():
            xy = self.xy(w, f)
            for t in range(d.n_time):
                self.write_truth(w, f, t)
                for z in range(d.n_z):
                    frame = self.renderer.frame(w, f, t, z)
                    for c, ch in enumerate(d.channels):
                        rel = self.file_name(w, f, t, z, c)
                        desc = None
                        if d.format == "imagexpress":
                            desc = _metamorph_description(
                                ch, c, d.pixel_size_um, xy, self.z_um(w, f, z), self.magnification
                            )
                        _write_tiff(self.out / rel, frame[c], d.pixel_size_um, desc)
                        if d.format == "opera":
                            index_images.append(self._index_entry(w, f, t, z, c, ch, rel, xy))
        if d.format == "imagexpress":
            (self.out / f"{d.name}.HTD").write_bytes(
                _htd_text(d.name, self.plate, self.well_list, d.fields, d.channels, d.n_z, d.n_time).encode("utf-8")
            )
        elif d.format == "opera":
            (self.out / "Index.idx.xml").write_bytes(
                _harmony_index(
                    d.name, self.plate, d.channels, d.pixel_size_um, index_images, self.magnification, self.na
                )
            )
        return self.out

    def _index_entry(
        self, w: WellRef, f: int, t: int, z: int, c: int, ch: str, rel: str, xy: tuple[float, float]
    ) -> dict[str, Any]:
        """One image of the Harmony index."""
        return {
            "id": f"{w.row + 1:02d}{w.column + 1:02d}K{t + 1}F{f + 1}P{z + 1}R{c + 1}",
            "url": rel,
            "row": w.row + 1,
            "col": w.column + 1,
            "field": f + 1,
            "plane": z + 1,
            "timepoint": t + 1,
            "channel": c + 1,
            "channel_name": ch,
            "x_um": xy[0],
            "y_um": xy[1],
            "z_um": self.z_um(w, f, z),
        }
