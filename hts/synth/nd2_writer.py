"""A minimal writer for Nikon NIS-Elements ``.nd2`` files (modern format, v3.0).

No public multi-well ND2 file exists, so this module writes synthetic plates
that the real :mod:`nd2` reader opens like files from NIS-Elements. It exists
for tests, demos and benchmarks; it is not a general-purpose ND2 exporter.

Format subset written
---------------------
The file is a sequence of chunks, each starting on a 4096-byte boundary::

    uint32 magic 0x0ABECEDA | uint32 name_length | uint64 data_length | name | data

``name`` is an ASCII tag ending in ``!`` followed by zero padding (NIS pads the
name so the next chunk starts on a boundary). The chunks written, in order:

``ND2 FILE SIGNATURE CHUNK NAME01!``
    Always first; its data is ``Ver3.0``.
``ImageAttributesLV!``
    ``SLxImageAttributes``: width, height, components (= channels), bits per
    component, sequence count, no compression.
``ImageMetadataLV!``
    ``SLxExperiment``: the loops, outermost first, nested through
    ``ppNextLevelEx``: ``TimeLoop`` (eType 1), ``XYPosLoop`` (eType 2, one point
    per position with ``dPosName`` and stage ``dPosX/dPosY/dPosZ``),
    ``ZStackLoop`` (eType 4). A loop of size 1 is left out, as NIS does, except
    that a single *named* position keeps its one-point XY loop so its name
    survives. With no loop at all the chunk is omitted.
``ImageMetadataSeqLV|0!``
    ``SLxPictureMetadata``: pixel size (``dCalibration``), objective name,
    magnification and NA, stage position of the first position, acquisition
    time, and ``sPicturePlanes`` with one plane per channel (name, colour,
    excitation/emission peak as a one-point fluorescent-probe spectrum).
    NIS-Elements writes this once for the file; the reader derives every frame's
    metadata from it and from the experiment loops.
``ImageCalibrationLV|0!``, ``ImageTextInfoLV!``
    Pixel size and objective again; a text description and the optics line.
``ImageDataSeq|N!``
    One chunk per frame, ``N`` = sequence index (T outer, then P, then Z
    inner). The name field is padded to 4072 bytes so that the data starts
    4088 bytes into the chunk: an 8-byte timestamp (float64, ms) followed, at
    chunk offset 4096, by the pixels as ``(Y, X, C)`` interleaved,
    little-endian, rows unpadded.
``CustomData|AcqTimesCache!``
    The frame timestamps (float64 ms), from which the reader builds per-frame
    times.
``ND2 FILEMAP SIGNATURE NAME 0001!``
    The chunk map: for every chunk its name followed by ``uint64 offset,
    uint64 data_length``, then ``ND2 CHUNK MAP SIGNATURE 0000001!`` and the
    map's own offset. These last 40 bytes are also the last 40 bytes of the
    file, which is how a reader finds the map.

Metadata chunks use the binary "CLX lite" variant encoding: a record is
``uint8 type | uint8 name_chars | name (UTF-16LE, NUL-terminated) | value``.
Types used: 1 bool (uint8), 2 int32, 3 uint32, 5 uint64, 6 float64, 8 string
(UTF-16LE, NUL-terminated), 9 byte array (uint64 size + bytes), 11 level
(``uint32 item_count | uint64 length`` then the children, then one uint64
offset per child). Lists are levels whose children have empty names.

Not written: compression, RGB images, tiles, per-frame
``ImageMetadataSeqLV|N!`` for N > 0, custom data tables (PFS, X/Y/Z per
frame), events, ROIs, binary layers, legacy (JPEG-2000) files.

The file is written under a temporary name in the destination folder and
renamed into place only once complete, so a crashed write never leaves a file
that looks finished.

>>> import numpy as np, tempfile, pathlib, nd2
>>> from hts.formats.base import Channel
>>> tmp = tempfile.TemporaryDirectory()
>>> data = np.zeros((1, 2, 1, 1, 16, 16), "uint16")          # T, P, Z, C, Y, X
>>> path = write_nd2(pathlib.Path(tmp.name) / "plate.nd2", data,
...                  positions=[Position("A01", 0, 0), Position("A02", 9000, 0)],
...                  channels=[Channel("DAPI", emission_nm=455)], shape_yx=(16, 16))
>>> with nd2.ND2File(path) as f:
...     dict(f.sizes)
{'P': 2, 'Y': 16, 'X': 16}
>>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import os
import struct
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from hts.formats.base import Channel

__all__ = ["Position", "write_nd2"]

# --------------------------------------------------------------------------- constants

_CHUNK_MAGIC = 0x0ABECEDA
_ALIGN = 4096
_CHUNK_HEADER = struct.Struct("<IIQ")  # magic, name length, data length
_FILE_SIGNATURE = b"ND2 FILE SIGNATURE CHUNK NAME01!"
_FILEMAP_SIGNATURE = b"ND2 FILEMAP SIGNATURE NAME 0001!"
_CHUNKMAP_SIGNATURE = b"ND2 CHUNK MAP SIGNATURE 0000001!"
_VERSION = b"Ver3.0"
# image chunks: the reader expects pixels at chunk offset 4096 = 16 (header)
# + 4072 (name field) + 8 (timestamp)
_IMAGE_NAME_FIELD = 4072
_TIMESTAMP = struct.Struct("<d")

# the acquisition date recorded in the metadata (Julian day number of
# 2024-01-01 00:00 UTC); fixed so that identical input gives identical files
_ACQUISITION_JDN = 2460310.5

_LOOP_TIME, _LOOP_XY, _LOOP_Z = 1, 2, 4
_MODALITY_WIDEFIELD_FLUORESCENCE = 0x101  # fluorescence | camera
_SUPPORTED_DTYPES = ("uint8", "uint16", "float32")

# CLX-lite variant type codes
_T_BOOL, _T_I32, _T_U32, _T_U64, _T_F64, _T_STR, _T_BYTES, _T_LEVEL = 1, 2, 3, 5, 6, 8, 9, 11


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class Position:
    """One XY stage position (a field of view) of the multipoint loop.

    Parameters
    ----------
    name : str or None
        The position's label as NIS stores it (e.g. ``"A01"``, ``"B12#2"``), or
        ``None`` for an unnamed point.
    x_um, y_um, z_um : float
        Stage coordinates in micrometres.
    """

    name: str | None
    x_um: float
    y_um: float
    z_um: float = 0.0


FrameSource = np.ndarray | Callable[[int, int, int], np.ndarray]


def write_nd2(
    path: str | os.PathLike[str],
    frames: FrameSource,
    *,
    positions: list[Position],
    channels: list[Channel],
    shape_yx: tuple[int, int],
    dtype: str | np.dtype = "uint16",
    n_time: int = 1,
    n_z: int = 1,
    pixel_size_um: float = 0.65,
    z_step_um: float = 1.0,
    time_interval_s: float = 60.0,
    objective: str | None = "Plan Apo 20x",
    magnification: float | None = 20.0,
    numerical_aperture: float | None = 0.75,
) -> Path:
    """Write an ND2 (v3.0) file that :class:`nd2.ND2File` reads back.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file. Written under a temporary name in the same folder and
        renamed into place when complete; an existing file is replaced.
    frames : numpy.ndarray or callable
        Either an array of shape ``(T, P, Z, C, Y, X)`` or a callable
        ``frames(t, p, z)`` returning one ``(C, Y, X)`` array. Frames are
        requested in acquisition order (T outer, then P, then Z inner) and each
        is written before the next is requested, so memory stays flat however
        large the plate. Integer input of another integer dtype is accepted
        when its values fit ``dtype``; anything else must already be ``dtype``
        or safely castable to it.
    positions : list of Position
        The XY positions, in acquisition order (``P >= 1``).
    channels : list of hts.formats.base.Channel
        The channels (``C >= 1``). ``name``, ``emission_nm``, ``excitation_nm``
        and ``color`` (``"RRGGBB"``, white when ``None``) are recorded.
    shape_yx : tuple of int
        Frame height and width in pixels.
    dtype : str or numpy.dtype, optional
        Pixel type: ``"uint8"``, ``"uint16"`` (default) or ``"float32"``.
    n_time, n_z : int, optional
        Number of time points and z planes. For array input they are taken
        from the array; values other than 1 must then agree with it.
    pixel_size_um : float, optional
        XY pixel size in micrometres.
    z_step_um : float, optional
        Z step in micrometres (recorded only when ``n_z > 1``).
    time_interval_s : float, optional
        Time-lapse period in seconds (recorded only when ``n_time > 1``).
    objective : str or None, optional
        Objective name.
    magnification, numerical_aperture : float or None, optional
        Objective magnification and NA; ``None`` records them as unknown.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        If the arguments are inconsistent (empty positions or channels, wrong
        array or frame shape, unsupported dtype, non-positive sizes).
    TypeError
        If a frame's values cannot be represented in ``dtype``.
    """
    dest = Path(path)
    dt = np.dtype(dtype)
    if dt.name not in _SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_SUPPORTED_DTYPES)}, not {dt.name}")
    dt = dt.newbyteorder("<")
    positions = list(positions)
    channels = list(channels)
    if not positions:
        raise ValueError("at least one position is required")
    if not channels:
        raise ValueError("at least one channel is required")
    ny, nx = (int(v) for v in shape_yx)
    if ny <= 0 or nx <= 0:
        raise ValueError(f"shape_yx must be positive, got {shape_yx}")
    if pixel_size_um <= 0:
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    n_pos, n_chan = len(positions), len(channels)

    if isinstance(frames, np.ndarray):
        n_time, n_z = _check_array(frames, n_time, n_z, n_pos, n_chan, ny, nx)
        array = frames

        def get_frame(t: int, p: int, z: int) -> np.ndarray:
            return array[t, p, z]

    elif callable(frames):
        get_frame = frames
    else:
        raise TypeError(f"frames must be an ndarray or a callable, not {type(frames).__name__}")
    if n_time < 1 or n_z < 1:
        raise ValueError(f"n_time and n_z must be >= 1, got {n_time} and {n_z}")
    if n_z > 1 and z_step_um <= 0:
        raise ValueError(f"z_step_um must be > 0, got {z_step_um}")

    spec = _Spec(
        positions=positions,
        channels=channels,
        ny=ny,
        nx=nx,
        dtype=dt,
        n_time=n_time,
        n_z=n_z,
        pixel_size_um=float(pixel_size_um),
        z_step_um=float(z_step_um),
        interval_ms=float(time_interval_s) * 1000.0,
        objective=objective,
        magnification=magnification,
        numerical_aperture=numerical_aperture,
    )

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        with open(tmp, "wb") as fh:
            _write_file(fh, spec, get_frame)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return dest


# --------------------------------------------------------------------------- internals


@dataclass
class _Spec:
    positions: list[Position]
    channels: list[Channel]
    ny: int
    nx: int
    dtype: np.dtype
    n_time: int
    n_z: int
    pixel_size_um: float
    z_step_um: float
    interval_ms: float
    objective: str | None
    magnification: float | None
    numerical_aperture: float | None

    @property
    def n_frames(self) -> int:
        return self.n_time * len(self.positions) * self.n_z

    @property
    def has_xy_loop(self) -> bool:
        return len(self.positions) > 1 or bool(self.positions[0].name)

    def frame_time_ms(self, t: int, p: int, z: int) -> float:
        """Synthetic acquisition time: the period times t, plus a small step per frame."""
        per_tp = len(self.positions) * self.n_z
        step = 50.0
        if self.n_time > 1 and self.interval_ms > 0:
            step = min(step, 0.5 * self.interval_ms / per_tp)
        return t * self.interval_ms + (p * self.n_z + z) * step


def _check_array(
    frames: np.ndarray, n_time: int, n_z: int, n_pos: int, n_chan: int, ny: int, nx: int
) -> tuple[int, int]:
    if frames.ndim != 6:
        raise ValueError(f"frames array must be 6-D (T, P, Z, C, Y, X), got shape {frames.shape}")
    t, p, z, c, y, x = frames.shape
    if n_time != 1 and n_time != t:
        raise ValueError(f"n_time={n_time} but the frames array has T={t}")
    if n_z != 1 and n_z != z:
        raise ValueError(f"n_z={n_z} but the frames array has Z={z}")
    expected = (t, n_pos, z, n_chan, ny, nx)
    if frames.shape != expected:
        raise ValueError(
            f"frames array shape {frames.shape} does not match (T, P, Z, C, Y, X) = {expected} "
            f"from {n_pos} positions, {n_chan} channels and shape_yx={(ny, nx)}"
        )
    return t, z


def _as_dtype(frame: np.ndarray, dt: np.dtype) -> np.ndarray:
    """Convert one frame to ``dt``, refusing conversions that would change values."""
    src = frame.dtype
    if src == dt or np.can_cast(src, dt, "safe"):
        return frame.astype(dt, copy=False)
    if src.kind in "biu" and dt.kind in "iu" and frame.size:
        info = np.iinfo(dt)
        lo, hi = frame.min(), frame.max()
        if info.min <= lo and hi <= info.max:
            return frame.astype(dt)
        raise TypeError(f"frame values {lo}..{hi} do not fit {dt.name}")
    if frame.size == 0:
        return frame.astype(dt)
    raise TypeError(f"cannot store {src.name} frames as {dt.name} without changing values")


# ----- chunk layer


class _ChunkFile:
    """Appends aligned chunks to a file and remembers where each one starts."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.pos = 0
        self.chunkmap: list[tuple[bytes, int, int]] = []  # name, offset, data length

    def _pad_to_alignment(self) -> None:
        pad = -self.pos % _ALIGN
        if pad:
            self.fh.write(bytes(pad))
            self.pos += pad

    def write(self, name: bytes, data: bytes, *, in_map: bool = True, name_field: int | None = None) -> int:
        """Write one chunk at the next boundary and return its offset.

        The name field is zero-padded so the chunk ends on a boundary (as NIS
        does), unless ``name_field`` fixes its length.
        """
        self._pad_to_alignment()
        offset = self.pos
        if name_field is None:
            name_field = len(name) + (-(_CHUNK_HEADER.size + len(name) + len(data)) % _ALIGN)
        header = _CHUNK_HEADER.pack(_CHUNK_MAGIC, name_field, len(data))
        self.fh.write(header + name.ljust(name_field, b"\0"))
        self.fh.write(data)
        self.pos += _CHUNK_HEADER.size + name_field + len(data)
        if in_map:
            self.chunkmap.append((name, offset, len(data)))
        return offset

    def write_image(self, index: int, timestamp_ms: float, pixels: np.ndarray) -> None:
        """Write ``ImageDataSeq|index!``: the timestamp, then the pixels at chunk offset 4096."""
        self._pad_to_alignment()
        name = f"ImageDataSeq|{index}!".encode()
        offset = self.pos
        n = pixels.nbytes + _TIMESTAMP.size
        header = _CHUNK_HEADER.pack(_CHUNK_MAGIC, _IMAGE_NAME_FIELD, n)
        self.fh.write(header + name.ljust(_IMAGE_NAME_FIELD, b"\0") + _TIMESTAMP.pack(timestamp_ms))
        self.fh.write(memoryview(pixels).cast("B"))
        self.pos += _CHUNK_HEADER.size + _IMAGE_NAME_FIELD + n
        self.chunkmap.append((name, offset, n))

    def finish(self) -> None:
        """Write the chunk map; the file then ends with its signature and offset."""
        self._pad_to_alignment()
        offset = self.pos
        entries = b"".join(name + struct.pack("<QQ", off, size) for name, off, size in self.chunkmap)
        tail = _CHUNKMAP_SIGNATURE + struct.pack("<Q", offset)
        self.write(_FILEMAP_SIGNATURE, entries + tail, in_map=False)


# ----- CLX-lite encoding


@dataclass(frozen=True)
class _Typed:
    """An integer with an explicit CLX-lite type code."""

    code: int
    value: int


def _u32(v: int) -> _Typed:
    return _Typed(_T_U32, int(v))


def _i32(v: int) -> _Typed:
    return _Typed(_T_I32, int(v))


def _u64(v: int) -> _Typed:
    return _Typed(_T_U64, int(v))


def _clx_name(name: str) -> bytes:
    encoded = (name + "\0").encode("utf-16-le")
    if len(encoded) // 2 > 255:
        raise ValueError(f"metadata key too long: {name!r}")
    return encoded


def _clx_record(name: str, value: Any) -> bytes:
    """Encode one named value as a CLX-lite record."""
    key = _clx_name(name)
    if isinstance(value, bool):
        code, payload = _T_BOOL, struct.pack("<B", value)
    elif isinstance(value, _Typed):
        fmt = {_T_I32: "<i", _T_U32: "<I", _T_U64: "<Q"}[value.code]
        code, payload = value.code, struct.pack(fmt, value.value)
    elif isinstance(value, int):
        code, payload = _T_I32, struct.pack("<i", value)
    elif isinstance(value, float):
        code, payload = _T_F64, struct.pack("<d", value)
    elif isinstance(value, str):
        code, payload = _T_STR, (value + "\0").encode("utf-16-le")
    elif isinstance(value, (bytes, bytearray)):
        code, payload = _T_BYTES, struct.pack("<Q", len(value)) + bytes(value)
    elif isinstance(value, dict):
        return _clx_level(key, list(value.items()))
    elif isinstance(value, list):
        return _clx_level(key, [("", item) for item in value])
    else:
        raise TypeError(f"cannot encode {type(value).__name__} for {name!r}")
    return bytes((code, len(key) // 2)) + key + payload


def _clx_level(key: bytes, items: Iterable[tuple[str, Any]]) -> bytes:
    """A level: header, children, then the children's offsets sorted by name (as NIS does)."""
    items = list(items)
    head_len = 2 + len(key) + 12
    children: list[bytes] = []
    offsets: list[tuple[str, int]] = []
    at = head_len
    for name, value in items:
        rec = _clx_record(name, value)
        offsets.append((name, at))
        children.append(rec)
        at += len(rec)
    header = bytes((_T_LEVEL, len(key) // 2)) + key + struct.pack("<IQ", len(items), at)
    table = b"".join(struct.pack("<Q", off) for _, off in sorted(offsets, key=lambda kv: kv[0]))
    return header + b"".join(children) + table


def _clx_chunk(root: str, content: dict[str, Any]) -> bytes:
    return _clx_record(root, content)


# ----- metadata content


def _abgr(color: str | None) -> int:
    """``"RRGGBB"`` (optionally with ``#``) to NIS's 32-bit ABGR colour; white when unset."""
    if not color:
        return 0xFFFFFF
    hexstr = color.lstrip("#")
    if len(hexstr) != 6:
        raise ValueError(f"channel colour must be 'RRGGBB', got {color!r}")
    r, g, b = (int(hexstr[i : i + 2], 16) for i in (0, 2, 4))
    return r | g << 8 | b << 16


def _spectrum(wavelength_nm: float | None) -> dict[str, Any]:
    if not wavelength_nm:
        return {"uiCount": _u32(0), "pPoint": {}, "bPoints": False}
    point = {"eType": _i32(4), "dWavelength": float(wavelength_nm), "dTValue": 1.0}
    return {"uiCount": _u32(1), "pPoint": {"Point0": point}, "bPoints": False}


def _plane(index: int, ch: Channel, spec: _Spec) -> dict[str, Any]:
    color = _abgr(ch.color)
    return {
        "uiCompCount": _u32(1),
        "uiSampleIndex": _u32(index),
        "uiModalityMask": _u64(_MODALITY_WIDEFIELD_FLUORESCENCE),
        "pFluorescentProbe": {
            "m_sName": str(ch.name),
            "m_uiColor": _u32(color),
            "m_ExcitationSpectrum": _spectrum(ch.excitation_nm),
            "m_EmissionSpectrum": _spectrum(ch.emission_nm),
        },
        "pFilterPath": {"m_sDescr": "", "m_uiCount": _u32(0), "m_pFilter": {}},
        "dLampVoltage": 0.0,
        "dFadingCorr": 0.0,
        "uiColor": _u32(color),
        "sDescription": str(ch.name),
        "dAcqTime": 0.0,
        "dPinholeDiameter": -1.0,
        "iChannelSeriesIndex": _i32(-1),
        "iCapturedPlaneIndex": _i32(0),
        "dObjCalibration1to1": spec.pixel_size_um,
    }


def _attributes(spec: _Spec) -> bytes:
    n_chan = len(spec.channels)
    bits = spec.dtype.itemsize * 8
    return _clx_chunk(
        "SLxImageAttributes",
        {
            "uiWidth": _u32(spec.nx),
            "uiWidthBytes": _u32(spec.nx * spec.dtype.itemsize * n_chan),
            "uiHeight": _u32(spec.ny),
            "uiComp": _u32(n_chan),
            "uiBpcInMemory": _u32(bits),
            "uiBpcSignificant": _u32(bits),
            "uiSequenceCount": _u32(spec.n_frames),
            "uiTileWidth": _u32(spec.nx),
            "uiTileHeight": _u32(spec.ny),
            "eCompression": _i32(2),  # none
            "dCompressionParam": 0.0,
            "uiVirtualComponents": _u32(n_chan),
        }
        | ({} if spec.dtype.kind == "f" else {"ePixelType": _i32(1)}),
    )


def _loop_common(loop_type: int, pars: dict[str, Any]) -> dict[str, Any]:
    return {
        "eType": _i32(loop_type),
        "wsApplicationDesc": "",
        "wsUserDesc": "",
        "aMeasProbesBase64": b"",
        "uLoopPars": pars,
    }


def _experiment(spec: _Spec) -> bytes | None:
    """``SLxExperiment`` with the loops of size > 1, outermost first; ``None`` when there are none."""
    loops: list[dict[str, Any]] = []
    if spec.n_time > 1:
        loops.append(
            _loop_common(
                _LOOP_TIME,
                {
                    "uiCount": _u32(spec.n_time),
                    "dStart": 0.0,
                    "dPeriod": spec.interval_ms,
                    "dDuration": spec.interval_ms * (spec.n_time - 1),
                    "dMinPeriodDiff": 0.0,
                    "dMaxPeriodDiff": 0.0,
                    "dAvgPeriodDiff": 0.0,
                    "bDurationPref": False,
                    "sAutoFocusBeforeCapture": {"eType": _i32(0)},
                    "wsInterfaceName": "",
                },
            )
        )
    if spec.has_xy_loop:
        points = [
            {
                "dPosX": float(p.x_um),
                "dPosY": float(p.y_um),
                "dPosZ": float(p.z_um),
                "dPFSOffset": -1.0,
                "dPosName": "" if p.name is None else str(p.name),
            }
            for p in spec.positions
        ]
        loop = _loop_common(
            _LOOP_XY,
            {
                "uiCount": _u32(len(points)),
                "bUseZ": True,
                "bRelativeXY": False,
                "dReferenceX": 0.0,
                "dReferenceY": 0.0,
                "bRedefineAfterPFS": False,
                "bRedefineAfterAutoFocus": False,
                "bKeepPFSOn": False,
                "bSplitMultipoints": False,
                "bUseAFPlane": False,
                "Points": points,
            },
        )
        loop["pItemValid"] = bytes([1] * len(points))
        loops.append(loop)
    if spec.n_z > 1:
        home = (spec.n_z - 1) // 2  # iType 0: symmetric around home, bottom to top
        loops.append(
            _loop_common(
                _LOOP_Z,
                {
                    "uiCount": _u32(spec.n_z),
                    "iType": _i32(0),
                    "bAbsolute": False,
                    "bZInverted": False,
                    "dZStep": spec.z_step_um,
                    "dZLow": -home * spec.z_step_um,
                    "dZHigh": (spec.n_z - 1 - home) * spec.z_step_um,
                    "dZHome": 0.0,
                    "dReferencePosition": 0.0,
                    "bTIRF": False,
                    "bTriggeredPiezo": False,
                    "wsZDevice": "",
                    "wsCommandBeforeCapture": "",
                    "wsCommandAfterCapture": "",
                },
            )
        )
    if not loops:
        return None
    # nest: each loop's single child is the next inner loop
    inner: dict[str, Any] | None = None
    for loop in reversed(loops):
        loop["uiNextLevelCount"] = _u32(1 if inner is not None else 0)
        loop["ppNextLevelEx"] = [inner] if inner is not None else []
        inner = loop
    assert inner is not None
    return _clx_chunk("SLxExperiment", inner)


def _picture_metadata(spec: _Spec) -> bytes:
    first = spec.positions[0]
    n_chan = len(spec.channels)
    return _clx_chunk(
        "SLxPictureMetadata",
        {
            "dTimeMSec": 0.0,
            "dTimeAbsolute": _ACQUISITION_JDN,
            "dXPos": float(first.x_um),
            "dYPos": float(first.y_um),
            "dZPos": float(first.z_um),
            "bZPosAbsolute": True,
            "dAngle": 0.0,
            "dTemperK": -1.0,
            "dCalibration": spec.pixel_size_um,
            "dCalibPrecision": 0.0,
            "dAspect": 1.0,
            "bCalibrated": True,
            "wsObjectiveName": spec.objective or "",
            "dObjectiveMag": float(spec.magnification) if spec.magnification else -1.0,
            "dObjectiveNA": float(spec.numerical_aperture) if spec.numerical_aperture else -1.0,
            "dRefractIndex1": 1.0,
            "dRefractIndex2": 1.0,
            "dZoom": 1.0,
            "dProjectiveMag": -1.0,
            "ePictureXAxis": _i32(0),
            "ePictureYAxis": _i32(1),
            "dTimeAxisCalibration": -1.0,
            "dZAxisCalibration": spec.z_step_um if spec.n_z > 1 else -1.0,
            "dStgLgCT11": 1.0,
            "dStgLgCT12": 0.0,
            "dStgLgCT21": 0.0,
            "dStgLgCT22": 1.0,
            "sPicturePlanes": {
                "uiCount": _u32(n_chan),
                "uiCompCount": _u32(n_chan),
                "sPlaneNew": {f"a{i}": _plane(i, ch, spec) for i, ch in enumerate(spec.channels)},
                "uiSampleCount": _u32(n_chan),
                "sDescription": "",
                "eRepresentation": _u32(0),
            },
        },
    )


def _calibration(spec: _Spec) -> bytes:
    return _clx_chunk(
        "SLxCalibration",
        {
            "dCalibration": spec.pixel_size_um,
            "dAspect": 1.0,
            "bValid": True,
            "sObjective": spec.objective or "",
        },
    )


def _text_info(spec: _Spec) -> bytes:
    dims = []
    if spec.n_time > 1:
        dims.append(f"T({spec.n_time})")
    if spec.has_xy_loop:
        dims.append(f"XY({len(spec.positions)})")
    if spec.n_z > 1:
        dims.append(f"Z({spec.n_z})")
    dims.append(f"\u03bb({len(spec.channels)})")
    lines = [
        "Metadata:",
        f"Dimensions: {' x '.join(dims)}",
        f"Number of Picture Planes: {len(spec.channels)}",
    ]
    for i, ch in enumerate(spec.channels, 1):
        lines += [f"Plane #{i}:", f" Name: {ch.name}", " Component Count: 1"]
    optics = spec.objective or ""
    items = {f"TextInfoItem_{i}": "" for i in range(15)}
    items["TextInfoItem_5"] = "\r\n".join(lines)
    items["TextInfoItem_13"] = optics
    items["TextInfoItem_14"] = "synthetic ND2 (hts.synth.nd2_writer)"
    return _clx_chunk("SLxImageTextInfo", items)


# ----- file assembly


def _write_file(fh: BinaryIO, spec: _Spec, get_frame: Callable[[int, int, int], np.ndarray]) -> None:
    out = _ChunkFile(fh)
    out.write(_FILE_SIGNATURE, _VERSION.ljust(64, b"\0"), in_map=False, name_field=len(_FILE_SIGNATURE))
    out.write(b"ImageAttributesLV!", _attributes(spec))
    experiment = _experiment(spec)
    if experiment is not None:
        out.write(b"ImageMetadataLV!", experiment)
    out.write(b"ImageMetadataSeqLV|0!", _picture_metadata(spec))
    out.write(b"ImageCalibrationLV|0!", _calibration(spec))
    out.write(b"ImageTextInfoLV!", _text_info(spec))

    expected = (len(spec.channels), spec.ny, spec.nx)
    times = np.empty(spec.n_frames, dtype="<f8")
    index = 0
    for t in range(spec.n_time):
        for p in range(len(spec.positions)):
            for z in range(spec.n_z):
                frame = np.asarray(get_frame(t, p, z))
                if frame.shape != expected:
                    raise ValueError(
                        f"frame (t={t}, p={p}, z={z}) has shape {frame.shape}, expected (C, Y, X) = {expected}"
                    )
                frame = _as_dtype(frame, spec.dtype)
                # (C, Y, X) -> (Y, X, C): NIS stores the channels of a pixel together
                pixels = np.ascontiguousarray(np.moveaxis(frame, 0, -1))
                times[index] = spec.frame_time_ms(t, p, z)
                out.write_image(index, float(times[index]), pixels)
                del frame, pixels
                index += 1

    out.write(b"CustomData|AcqTimesCache!", times.tobytes())
    out.finish()
