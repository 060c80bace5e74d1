"""Round-trip tests: files from ``hts.synth.nd2_writer`` read back with the real ``nd2`` library."""

from __future__ import annotations

import gc
import warnings
import weakref
from pathlib import Path

import nd2
import numpy as np
import pytest

from hts.formats.base import Channel
from hts.synth.nd2_writer import Position, write_nd2

CHANNELS = [
    Channel("DAPI", emission_nm=455.0, excitation_nm=405.0, color="0000FF"),
    Channel("GFP", emission_nm=525.0, excitation_nm=488.0, color="00FF00"),
]
POSITIONS = [
    Position("A01", 1000.0, 2000.0, 10.0),
    Position(None, 10_000.5, -2000.25),  # unnamed point
    Position("B12#2", -5.0, 7.5, 3.0),
]


def _data(shape: tuple[int, ...], dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def _stage(pos: nd2.structures.Position) -> tuple[float, float, float]:
    return tuple(pos.stagePositionUm)  # type: ignore[return-value]


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    """An empty folder of this test's own for the written files."""
    folder = tmp_path / "nd2_writer"
    folder.mkdir()
    return folder


@pytest.fixture()
def plate(out: Path) -> tuple[Path, np.ndarray]:
    """3 positions (one unnamed), 2 channels, 24x40 uint16, single T and Z."""
    data = _data((1, 3, 1, 2, 24, 40))
    path = write_nd2(
        out / "plate.nd2",
        data,
        positions=POSITIONS,
        channels=CHANNELS,
        shape_yx=(24, 40),
        pixel_size_um=0.325,
        objective="Plan Apo 40x",
        magnification=40.0,
        numerical_aperture=0.95,
    )
    return path, data


def test_sizes_pixels_and_frame_order(plate: tuple[Path, np.ndarray]) -> None:
    path, data = plate
    assert path.exists() and path.name == "plate.nd2"
    assert not [p for p in path.parent.iterdir() if p.name != "plate.nd2"]  # no temp leftovers
    with nd2.ND2File(path) as f:
        assert f.version == (3, 0)
        assert dict(f.sizes) == {"P": 3, "C": 2, "Y": 24, "X": 40}
        assert f.dtype == np.uint16
        assert f.loop_indices == ({"P": 0}, {"P": 1}, {"P": 2})
        np.testing.assert_array_equal(f.asarray(), data[0, :, 0])
        np.testing.assert_array_equal(f.to_dask().compute(), data[0, :, 0])
        for p in range(3):
            np.testing.assert_array_equal(f.read_frame(p), data[0, p, 0])
            np.testing.assert_array_equal(f.asarray(position=p), data[0, p : p + 1, 0])  # keeps P


def test_positions_from_experiment_and_frame_metadata(plate: tuple[Path, np.ndarray]) -> None:
    path, _ = plate
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a missing frame-time table warns
        with nd2.ND2File(path) as f:
            (loop,) = f.experiment
            assert loop.type == "XYPosLoop" and loop.count == 3
            points = loop.parameters.points
            assert [pt.name for pt in points] == ["A01", None, "B12#2"]
            assert [_stage(pt) for pt in points] == [(p.x_um, p.y_um, p.z_um) for p in POSITIONS]
            for i, expected in enumerate(POSITIONS):
                fm = f.frame_metadata(i)
                assert len(fm.channels) == 2
                for ch in fm.channels:
                    assert ch.position.name == expected.name
                    assert _stage(ch.position) == (expected.x_um, expected.y_um, expected.z_um)
            times = [f.frame_metadata(i).channels[0].time.relativeTimeMs for i in range(3)]
            assert times == sorted(times)


def test_channels_and_instrument(plate: tuple[Path, np.ndarray]) -> None:
    path, _ = plate
    with nd2.ND2File(path) as f:
        chans = f.metadata.channels
        assert f.metadata.contents.channelCount == 2
        assert [c.channel.name for c in chans] == ["DAPI", "GFP"]
        assert [c.channel.emissionLambdaNm for c in chans] == [455.0, 525.0]
        assert [c.channel.excitationLambdaNm for c in chans] == [405.0, 488.0]
        assert [(c.channel.color.r, c.channel.color.g, c.channel.color.b) for c in chans] == [
            (0, 0, 255),
            (0, 255, 0),
        ]
        assert tuple(f.voxel_size()) == pytest.approx((0.325, 0.325, 1.0))
        assert chans[0].volume.axesCalibration[:2] == pytest.approx((0.325, 0.325))
        mic = chans[0].microscope
        assert mic.objectiveName == "Plan Apo 40x"
        assert mic.objectiveMagnification == 40.0
        assert mic.objectiveNumericalAperture == 0.95
        assert f.text_info["optics"] == "Plan Apo 40x"


def test_channel_without_wavelengths_or_colour(out: Path) -> None:
    data = _data((1, 1, 1, 1, 8, 8))
    path = write_nd2(
        out / "bf.nd2",
        data,
        positions=[Position("C03", 1.0, 2.0)],
        channels=[Channel("Brightfield")],
        shape_yx=(8, 8),
        objective=None,
        magnification=None,
        numerical_aperture=None,
    )
    with nd2.ND2File(path) as f:
        ch = f.metadata.channels[0]
        assert ch.channel.name == "Brightfield"
        assert ch.channel.emissionLambdaNm is None and ch.channel.excitationLambdaNm is None
        assert (ch.channel.color.r, ch.channel.color.g, ch.channel.color.b) == (255, 255, 255)
        assert ch.microscope.objectiveName is None
        assert ch.microscope.objectiveMagnification is None
        assert ch.microscope.objectiveNumericalAperture is None


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_integer_dtypes_round_trip(out: Path, dtype: str) -> None:
    data = _data((1, 2, 1, 3, 17, 23), dtype=dtype)  # odd sizes: rows not 4-byte aligned
    chans = [Channel(n) for n in ("a", "b", "c")]
    path = write_nd2(
        out / f"{dtype}.nd2",
        data,
        positions=POSITIONS[:2],
        channels=chans,
        shape_yx=(17, 23),
        dtype=dtype,
    )
    with nd2.ND2File(path) as f:
        assert f.dtype == np.dtype(dtype)
        assert dict(f.sizes) == {"P": 2, "C": 3, "Y": 17, "X": 23}
        out = f.asarray()
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, data[0, :, 0])


def test_float32_round_trip(out: Path) -> None:
    data = np.random.default_rng(1).random((1, 1, 1, 2, 8, 12), dtype=np.float32)
    path = write_nd2(
        out / "f.nd2",
        data,
        positions=[Position(None, 0, 0)],
        channels=CHANNELS,
        shape_yx=(8, 12),
        dtype="float32",
    )
    with nd2.ND2File(path) as f:
        assert f.dtype == np.float32
        np.testing.assert_array_equal(f.asarray(), data[0, 0, 0])


def test_time_and_z_loops(out: Path) -> None:
    data = _data((3, 2, 4, 2, 16, 16), seed=3)
    path = write_nd2(
        out / "tz.nd2",
        data,
        positions=POSITIONS[:2],
        channels=CHANNELS,
        shape_yx=(16, 16),
        n_time=3,
        n_z=4,
        z_step_um=0.5,
        time_interval_s=30.0,
        pixel_size_um=0.65,
    )
    with nd2.ND2File(path) as f:
        assert dict(f.sizes) == {"T": 3, "P": 2, "Z": 4, "C": 2, "Y": 16, "X": 16}
        assert [loop.type for loop in f.experiment] == ["TimeLoop", "XYPosLoop", "ZStackLoop"]
        assert [loop.nestingLevel for loop in f.experiment] == [0, 1, 2]
        tloop, _, zloop = f.experiment
        assert tloop.parameters.periodMs == 30_000.0
        assert zloop.parameters.stepUm == 0.5
        assert tuple(f.voxel_size()) == pytest.approx((0.65, 0.65, 0.5))
        # acquisition order: T outer, then P, then Z inner
        expected_idx = [{"T": t, "P": p, "Z": z} for t in range(3) for p in range(2) for z in range(4)]
        assert list(f.loop_indices) == expected_idx
        for i, idx in enumerate(expected_idx):
            np.testing.assert_array_equal(f.read_frame(i), data[idx["T"], idx["P"], idx["Z"]])
        np.testing.assert_array_equal(f.asarray(), data)
        np.testing.assert_array_equal(f.to_dask().compute(), data)
        times = [f.frame_metadata(i).channels[0].time.relativeTimeMs for i in range(len(expected_idx))]
        assert times == sorted(times)
        assert times[8] - times[0] == pytest.approx(30_000.0)  # first frame of t=1
        # every frame reports its XY position's stage coordinates and name
        for i, idx in enumerate(expected_idx):
            pos = f.frame_metadata(i).channels[0].position
            assert pos.name == POSITIONS[idx["P"]].name
            assert pos.stagePositionUm.x == POSITIONS[idx["P"]].x_um
            assert pos.stagePositionUm.y == POSITIONS[idx["P"]].y_um


def test_time_only_and_z_only(out: Path) -> None:
    one = [Position(None, 5.0, 6.0, 7.0)]
    t_data = _data((2, 1, 1, 1, 8, 8), seed=4)
    z_data = _data((1, 1, 3, 1, 8, 8), seed=5)
    tp = write_nd2(out / "t.nd2", t_data, positions=one, channels=CHANNELS[:1], shape_yx=(8, 8))
    zp = write_nd2(out / "z.nd2", z_data, positions=one, channels=CHANNELS[:1], shape_yx=(8, 8), z_step_um=2.0)
    with nd2.ND2File(tp) as f:
        assert dict(f.sizes) == {"T": 2, "Y": 8, "X": 8}
        np.testing.assert_array_equal(f.asarray(), t_data[:, 0, 0, 0])
    with nd2.ND2File(zp) as f:
        assert dict(f.sizes) == {"Z": 3, "Y": 8, "X": 8}
        assert f.voxel_size().z == 2.0
        np.testing.assert_array_equal(f.asarray(), z_data[0, 0, :, 0])


def test_single_position(out: Path) -> None:
    """One unnamed position: no loops at all; one named position keeps a one-point XY loop."""
    data = _data((1, 1, 1, 2, 8, 8))
    unnamed = write_nd2(
        out / "u.nd2",
        data,
        positions=[Position(None, 11.0, 22.0, 33.0)],
        channels=CHANNELS,
        shape_yx=(8, 8),
    )
    named = write_nd2(
        out / "n.nd2",
        data,
        positions=[Position("D04", 11.0, 22.0, 33.0)],
        channels=CHANNELS,
        shape_yx=(8, 8),
    )
    with nd2.ND2File(unnamed) as f:
        assert dict(f.sizes) == {"C": 2, "Y": 8, "X": 8}
        assert f.experiment == []
        pos = f.frame_metadata(0).channels[0].position
        assert pos.name is None and _stage(pos) == (11.0, 22.0, 33.0)
        np.testing.assert_array_equal(f.asarray(), data[0, 0, 0])
    with nd2.ND2File(named) as f:
        assert dict(f.sizes) == {"C": 2, "Y": 8, "X": 8}
        (loop,) = f.experiment
        assert loop.type == "XYPosLoop" and loop.count == 1
        assert loop.parameters.points[0].name == "D04"
        pos = f.frame_metadata(0).channels[0].position
        assert pos.name == "D04" and _stage(pos) == (11.0, 22.0, 33.0)
        np.testing.assert_array_equal(f.asarray(), data[0, 0, 0])


def test_callable_frames_streamed_in_acquisition_order(out: Path) -> None:
    calls: list[tuple[int, int, int]] = []
    previous: list[weakref.ref] = []

    def frame(t: int, p: int, z: int) -> np.ndarray:
        gc.collect()
        # the writer has let go of the previous frame before asking for the next
        assert all(r() is None for r in previous)
        calls.append((t, p, z))
        arr = np.full((2, 12, 10), 1000 * t + 100 * p + 10 * z, dtype=np.uint16)
        arr[1] += 1
        previous.append(weakref.ref(arr))
        return arr

    path = write_nd2(out / "c.nd2", frame, positions=POSITIONS, channels=CHANNELS, shape_yx=(12, 10), n_time=2, n_z=2)
    assert calls == [(t, p, z) for t in range(2) for p in range(3) for z in range(2)]
    with nd2.ND2File(path) as f:
        assert dict(f.sizes) == {"T": 2, "P": 3, "Z": 2, "C": 2, "Y": 12, "X": 10}
        arr = f.asarray()
    for t, p, z in calls:
        assert (arr[t, p, z, 0] == 1000 * t + 100 * p + 10 * z).all()
        assert (arr[t, p, z, 1] == 1000 * t + 100 * p + 10 * z + 1).all()


def test_96_well_plate(out: Path) -> None:
    wells = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]
    positions = [Position(w, 9000.0 * (i % 12), 9000.0 * (i // 12)) for i, w in enumerate(wells)]
    data = _data((1, 96, 1, 2, 64, 64), seed=7)
    path = write_nd2(out / "p96.nd2", data, positions=positions, channels=CHANNELS, shape_yx=(64, 64))
    with nd2.ND2File(path) as f:
        assert dict(f.sizes) == {"P": 96, "C": 2, "Y": 64, "X": 64}
        points = f.experiment[0].parameters.points
        assert [pt.name for pt in points] == wells
        assert _stage(points[95]) == (9000.0 * 11, 9000.0 * 7, 0.0)
        assert f.frame_metadata(13).channels[1].position.name == "B02"
        np.testing.assert_array_equal(f.asarray(), data[0, :, 0])


@pytest.mark.parametrize("keep", [0.5, 0.99, -1, -40])
def test_truncated_file_is_detected(out: Path, keep: float) -> None:
    """A cut-short file opens lazily, then fails on first metadata access.

    The chunk map is located through the file's last 40 bytes; once they are
    gone ``nd2`` raises ``ValueError("Invalid ChunkMap signature ...")``.
    """
    data = _data((1, 3, 1, 2, 24, 40))
    src = write_nd2(out / "full.nd2", data, positions=POSITIONS, channels=CHANNELS, shape_yx=(24, 40))
    raw = src.read_bytes()
    cut = int(len(raw) * keep) if keep > 0 else len(raw) + int(keep)
    bad = out / "cut.nd2"
    bad.write_bytes(raw[:cut])
    with pytest.raises(ValueError, match="ChunkMap signature"):
        with nd2.ND2File(bad) as f:
            f.sizes  # noqa: B018
    with pytest.raises(ValueError, match="ChunkMap signature"):
        nd2.imread(bad)


def test_failed_write_leaves_nothing(out: Path) -> None:
    def frame(t: int, p: int, z: int) -> np.ndarray:
        if p == 2:
            raise RuntimeError("camera unplugged")
        return np.zeros((2, 8, 8), np.uint16)

    dest = out / "crash.nd2"
    with pytest.raises(RuntimeError, match="camera unplugged"):
        write_nd2(dest, frame, positions=POSITIONS, channels=CHANNELS, shape_yx=(8, 8))
    assert list(out.iterdir()) == []


def test_rewrite_replaces_existing_file(out: Path) -> None:
    dest = out / "x.nd2"
    dest.write_bytes(b"old")
    data = _data((1, 1, 1, 1, 8, 8))
    write_nd2(dest, data, positions=[Position(None, 0, 0)], channels=CHANNELS[:1], shape_yx=(8, 8))
    with nd2.ND2File(dest) as f:
        np.testing.assert_array_equal(f.asarray(), data[0, 0, 0, 0])


def test_input_dtype_conversion(out: Path) -> None:
    ok = np.arange(64, dtype=np.int64).reshape(1, 1, 1, 1, 8, 8)  # fits uint8
    path = write_nd2(
        out / "ok.nd2",
        ok,
        positions=[Position(None, 0, 0)],
        channels=CHANNELS[:1],
        shape_yx=(8, 8),
        dtype="uint8",
    )
    with nd2.ND2File(path) as f:
        np.testing.assert_array_equal(f.asarray(), ok[0, 0, 0, 0])
    with pytest.raises(TypeError, match="do not fit"):
        write_nd2(
            out / "big.nd2",
            ok + 250,
            positions=[Position(None, 0, 0)],
            channels=CHANNELS[:1],
            shape_yx=(8, 8),
            dtype="uint8",
        )
    with pytest.raises(TypeError, match="float64"):
        write_nd2(
            out / "f.nd2",
            ok.astype(float),
            positions=[Position(None, 0, 0)],
            channels=CHANNELS[:1],
            shape_yx=(8, 8),
        )
    assert sorted(p.name for p in out.iterdir()) == ["ok.nd2"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"positions": []}, "position"),
        ({"channels": []}, "channel"),
        ({"shape_yx": (8, 9)}, "does not match"),
        ({"n_time": 2}, "n_time"),
        ({"dtype": "int16"}, "dtype"),
    ],
)
def test_invalid_arguments(out: Path, kwargs: dict, message: str) -> None:
    args = {
        "positions": POSITIONS[:1],
        "channels": CHANNELS[:1],
        "shape_yx": (8, 8),
    } | kwargs
    data = np.zeros((1, 1, 1, 1, 8, 8), np.uint16)
    with pytest.raises(ValueError, match=message):
        write_nd2(out / "bad.nd2", data, **args)


def test_callable_frame_with_wrong_shape(out: Path) -> None:
    with pytest.raises(ValueError, match=r"expected \(C, Y, X\)"):
        write_nd2(
            out / "bad.nd2",
            lambda t, p, z: np.zeros((1, 8, 8), np.uint16),
            positions=POSITIONS[:1],
            channels=CHANNELS,
            shape_yx=(8, 8),
        )
    assert list(out.iterdir()) == []
