"""TIFF-folder plate readers: layouts, metadata side files, validation errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hts.errors import SourceError
from hts.formats.tiff import (
    CellomicsReader,
    ImageXpressReader,
    OperaReader,
    PatternReader,
    detect_tiff_layout,
)
from hts.wells import PLATE_TYPES, WellRef, parse_well

CP_EXAMPLE = Path(__file__).parents[1] / "data" / "cellomics_cp_example"
GUID = "D6E3B1F0-1234-4A5B-8C9D-0123456789AB"
SHAPE = (6, 8)


def write(folder: Path, rel: str, value: int = 0, shape=SHAPE, dtype=np.uint16) -> np.ndarray:
    """Write a TIFF whose pixels encode ``value`` (and differ across the plane)."""
    arr = (np.arange(np.prod(shape)).reshape(shape) + value * 100).astype(dtype)
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr)
    return arr


def assert_round_trip(reader, desc) -> None:
    """Every field's pixels equal its files, in (t, c, z) key order."""
    t, c, z, y, x = desc.shape
    for f in desc.fields:
        got = reader.read_field(f, desc)
        assert got.shape == desc.shape and got.dtype == np.dtype(desc.dtype)
        want = np.stack([tifffile.imread(p) for p in f.key]).reshape(t, c, z, y, x)
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ real data


def test_cellomics_cellprofiler_example():
    assert detect_tiff_layout(CP_EXAMPLE) is CellomicsReader
    assert CellomicsReader.sniff(CP_EXAMPLE)
    assert not ImageXpressReader.sniff(CP_EXAMPLE) and not OperaReader.sniff(CP_EXAMPLE)
    reader = CellomicsReader(CP_EXAMPLE)
    desc = reader.describe()
    assert desc.name == "AS_09125_050116030001"
    assert desc.format == "cellomics"
    assert desc.plate_type == PLATE_TYPES[96]
    assert [c.name for c in desc.channels] == ["d0", "d1", "d2"]
    assert desc.shape == (1, 3, 1, 512, 512) and desc.dtype == "uint8"
    assert desc.wells == [parse_well("D03")]
    (field,) = desc.fields
    assert (field.well, field.index, field.name) == (WellRef(3, 2), 0, "00")
    names = [f"AS_09125_050116030001_D03f00d{c}.tif" for c in range(3)]
    assert [Path(p).name for p in field.key] == names
    assert [p.name for p in desc.files] == names
    assert desc.pixel_size_um == (None, None, None)
    pixels = reader.read_field(field, desc)
    for c, name in enumerate(names):
        np.testing.assert_array_equal(pixels[0, c, 0], tifffile.imread(CP_EXAMPLE / name))
    assert pixels.std() > 0  # real image content, not a blank


# ---------------------------------------------------------------- ImageXpress


def test_imagexpress_sites_channels_guid_and_thumbnails(tmp_path):
    v = 0
    for well in ("B03", "C12"):
        for site in (1, 2, 10):
            for w in (1, 2, 10):
                v += 1
                suffix = GUID if w == 2 else ""
                write(tmp_path, f"Plate_1_{well}_s{site}_w{w}{suffix}.tif", v)
    write(tmp_path, "Plate_1_B03_s1_w1_thumb.tif", 99, shape=(2, 2))
    assert detect_tiff_layout(tmp_path) is ImageXpressReader
    assert ImageXpressReader.sniff(tmp_path) and not CellomicsReader.sniff(tmp_path)
    reader = ImageXpressReader(tmp_path)
    desc = reader.describe()
    assert desc.name == "Plate_1" and desc.format == "imagexpress"
    assert [c.name for c in desc.channels] == ["w1", "w2", "w10"]
    assert desc.shape == (1, 3, 1, *SHAPE) and desc.dtype == "uint16"
    assert desc.wells == [parse_well("B03"), parse_well("C12")]
    assert desc.fields_per_well == {parse_well("B03"): 3, parse_well("C12"): 3}
    assert [(f.well.name, f.index, f.name) for f in desc.fields] == [
        ("B03", 0, "1"), ("B03", 1, "2"), ("B03", 2, "10"),
        ("C12", 0, "1"), ("C12", 1, "2"), ("C12", 2, "10"),
    ]  # fmt: skip
    assert [Path(p).name for p in desc.fields[2].key] == [
        "Plate_1_B03_s10_w1.tif",
        f"Plate_1_B03_s10_w2{GUID}.tif",
        "Plate_1_B03_s10_w10.tif",
    ]
    assert len(desc.files) == 18 and not any("thumb" in p.name for p in desc.files)
    assert_round_trip(reader, desc)
    # value written for B03 s2 w10 is the 6th file: pixels encode it
    assert reader.read_field(desc.fields[1], desc)[0, 2, 0, 0, 0] == 6 * 100


def test_imagexpress_single_site_single_channel(tmp_path):
    write(tmp_path, "Screen_A01.tif", 1)
    write(tmp_path, "Screen_H12.tif", 2)
    reader = ImageXpressReader(tmp_path)
    desc = reader.describe()
    assert [c.name for c in desc.channels] == ["w1"]
    assert desc.shape == (1, 1, 1, *SHAPE)
    assert [(f.well.name, f.index, f.name) for f in desc.fields] == [("A01", 0, None), ("H12", 0, None)]
    want = (np.arange(48).reshape(SHAPE) + 200).astype(np.uint16)
    np.testing.assert_array_equal(reader.read_field(desc.fields[1], desc)[0, 0, 0], want)


def test_imagexpress_htd_timepoints_zsteps(tmp_path):
    expected = {}
    for t in (1, 2):
        for z in (1, 2, 3):
            for w in (1, 2):
                rel = f"TimePoint_{t}/ZStep_{z}/Scr_B03_s1_w{w}.tif"
                expected[t, w, z] = write(tmp_path, rel, t * 100 + w * 10 + z)
    (tmp_path / "Scr.HTD").write_text(
        '"HTSInfoFile", Version 1.0\n"Description", "test, with comma"\n"TimePoints", 2\n"ZSeries", TRUE\n'
        '"ZSteps", 3\n"XWells", 24\n"YWells", 16\n"WellsSelection1", FALSE, TRUE\n"Sites", FALSE\n'
        '"NWavelengths", 2\n"WaveName1", "DAPI"\n"WaveName2", "FITC 488"\n"EndFile"\n'
    )
    reader = ImageXpressReader(tmp_path)
    desc = reader.describe()
    assert [c.name for c in desc.channels] == ["DAPI", "FITC 488"]
    assert desc.shape == (2, 2, 3, *SHAPE)
    assert desc.plate_type == PLATE_TYPES[384]  # from XWells x YWells though B03 fits a 96-well plate
    htd = desc.instrument["htd"]
    assert htd["file"] == "Scr.HTD" and htd["ZSeries"] is True and htd["ZSteps"] == 3
    assert "WellsSelection1" not in htd
    json.dumps(desc.instrument)  # JSON-serializable
    (field,) = desc.fields
    assert len(field.key) == 12
    assert field.key[1].endswith("TimePoint_1/ZStep_2/Scr_B03_s1_w1.tif")
    assert field.key[3].endswith("TimePoint_1/ZStep_1/Scr_B03_s1_w2.tif")
    px = reader.read_field(field, desc)
    for (t, w, z), arr in expected.items():
        np.testing.assert_array_equal(px[t - 1, w - 1, z - 1], arr)
    # options: channel names override, plate_wells hint
    desc = ImageXpressReader(tmp_path, channel_names=["Hoechst", "GFP"], plate_wells=1536).describe()
    assert [c.name for c in desc.channels] == ["Hoechst", "GFP"]
    assert desc.plate_type == PLATE_TYPES[1536]
    with pytest.raises(SourceError, match=r"3 channel names given .* for 2 channels"):
        ImageXpressReader(tmp_path, channel_names=["a", "b", "c"]).describe()
    with pytest.raises(SourceError, match="plate_wells=100"):
        ImageXpressReader(tmp_path, plate_wells=100).describe()


def test_imagexpress_pixel_size_from_metaseries_description(tmp_path):
    desc_xml = (
        '<MetaData><prop id="spatial-calibration-x" type="float" value="0.645"/>'
        '<prop id="spatial-calibration-y" type="float" value="0.65"/>'
        '<prop id="spatial-calibration-units" type="string" value="um"/>'
        '<prop id="_MagSetting_" type="string" value="20X Plan Apo"/></MetaData>'
    )
    tifffile.imwrite(tmp_path / "P_A01_w1.tif", np.zeros(SHAPE, np.uint16), description=desc_xml)
    (tmp_path / "other.htd").write_text('WaveName1="Brightfield"\nXWells=12\nYWells=8\n')  # key=value variant
    desc = ImageXpressReader(tmp_path).describe()
    assert [c.name for c in desc.channels] == ["Brightfield"]
    assert desc.pixel_size_um == (0.645, 0.65, None)
    assert desc.instrument["objective"] == "20X Plan Apo"


# ----------------------------------------------------------------------- Opera


def _opera_plate(folder: Path) -> dict:
    expected = {}
    for well in ((2, 3), (2, 4)):
        for f in (1, 2):
            for p in (1, 2):
                for ch in (1, 2):
                    name = f"r{well[0]:02d}c{well[1]:02d}f{f:02d}p{p:02d}-ch{ch}sk1fk1fl1.tiff"
                    expected[name] = write(folder, name, well[1] * 100 + f * 10 + p * 3 + ch)
    return expected


def test_opera_without_index(tmp_path):
    plate = tmp_path / "MyScreen__2024-01-01"
    _opera_plate(plate)
    assert detect_tiff_layout(plate) is OperaReader and OperaReader.sniff(plate)
    reader = OperaReader(plate)
    desc = reader.describe()
    assert desc.name == "MyScreen__2024-01-01" and desc.format == "opera"
    assert [c.name for c in desc.channels] == ["ch1", "ch2"]
    assert desc.shape == (1, 2, 2, *SHAPE)
    assert [(f.well.name, f.index, f.name) for f in desc.fields] == [
        ("B03", 0, "01"),
        ("B03", 1, "02"),
        ("B04", 0, "01"),
        ("B04", 1, "02"),
    ]
    assert [Path(p).name for p in desc.fields[1].key] == [
        "r02c03f02p01-ch1sk1fk1fl1.tiff", "r02c03f02p02-ch1sk1fk1fl1.tiff",
        "r02c03f02p01-ch2sk1fk1fl1.tiff", "r02c03f02p02-ch2sk1fk1fl1.tiff",
    ]  # fmt: skip
    assert desc.pixel_size_um == (None, None, None)
    assert_round_trip(reader, desc)
    assert reader.read_field(desc.fields[3], desc)[0, 1, 0, 0, 0] == (4 * 100 + 20 + 3 + 2) * 100


INDEX_XML = """<?xml version="1.0" encoding="utf-8"?>
<EvaluationInputData xmlns="http://www.perkinelmer.com/PEHH/HarmonyV6" Version="2">
  <InstrumentType>Phenix</InstrumentType>
  <Plates><Plate><PlateID>PLT-7</PlateID><PlateTypeName>384 PerkinElmer CellCarrier</PlateTypeName>
    <PlateRows>16</PlateRows><PlateColumns>24</PlateColumns></Plate></Plates>
  <Maps><Map>
    <Entry ChannelID="1"><ChannelName>HOECHST 33342</ChannelName>
      <ImageResolutionX Unit="m">6.4999999999999996E-07</ImageResolutionX>
      <ImageResolutionY Unit="m">6.4999999999999996E-07</ImageResolutionY>
      <MainExcitationWavelength Unit="nm">375</MainExcitationWavelength>
      <MainEmissionWavelength Unit="nm">456</MainEmissionWavelength>
      <ObjectiveMagnification Unit="">20</ObjectiveMagnification><ObjectiveNA Unit="">1</ObjectiveNA></Entry>
    <Entry ChannelID="2"><ChannelName>Alexa 488</ChannelName>
      <MainExcitationWavelength Unit="nm">488</MainExcitationWavelength>
      <MainEmissionWavelength Unit="nm">525</MainEmissionWavelength></Entry>
  </Map></Maps>
  <Images>
    <Image Version="1"><URL>r02c03f01p01-ch1sk1fk1fl1.tiff</URL><Row>2</Row><Col>3</Col><FieldID>1</FieldID>
      <PlaneID>1</PlaneID><ChannelID>1</ChannelID>
      <PositionX Unit="m">-0.000325</PositionX><PositionY Unit="m">0.00012</PositionY>
      <PositionZ Unit="m">-2E-06</PositionZ></Image>
    <Image Version="1"><URL>r02c03f01p02-ch1sk1fk1fl1.tiff</URL><Row>2</Row><Col>3</Col><FieldID>1</FieldID>
      <PlaneID>2</PlaneID><ChannelID>1</ChannelID>
      <PositionX Unit="m">-0.000325</PositionX><PositionY Unit="m">0.00012</PositionY>
      <PositionZ Unit="m">1E-06</PositionZ></Image>
  </Images>
</EvaluationInputData>
"""


def test_opera_with_harmony_index(tmp_path):
    plate = tmp_path / "export"
    _opera_plate(plate / "Images")
    (plate / "Images" / "Index.idx.xml").write_text(INDEX_XML)
    assert detect_tiff_layout(plate) is OperaReader
    reader = OperaReader(plate)
    desc = reader.describe()
    assert desc.name == "export"
    assert [(c.name, c.excitation_nm, c.emission_nm) for c in desc.channels] == [
        ("HOECHST 33342", 375.0, 456.0),
        ("Alexa 488", 488.0, 525.0),
    ]
    assert desc.pixel_size_um == pytest.approx((0.65, 0.65, 3.0))
    assert desc.plate_type == PLATE_TYPES[384]
    assert desc.instrument["index"] == "Images/Index.idx.xml"
    assert desc.instrument["ObjectiveMagnification"] == 20
    assert desc.instrument["PlateID"] == "PLT-7" and desc.instrument["InstrumentType"] == "Phenix"
    assert desc.fields[0].stage_xy_um == pytest.approx((-325.0, 120.0))
    assert desc.fields[1].stage_xy_um is None
    json.dumps(desc.instrument)
    assert_round_trip(reader, desc)


def test_opera_corrupt_index(tmp_path):
    _opera_plate(tmp_path)
    (tmp_path / "Index.idx.xml").write_text("<EvaluationInputData><Images>")
    with pytest.raises(SourceError, match=r"Index\.idx\.xml: unreadable Harmony index"):
        OperaReader(tmp_path).describe()


# ------------------------------------------------------------------ Cellomics


def test_cellomics_synthetic_fields_and_plate_choice(tmp_path):
    for plate in ("AS_1_001", "AS_1_002"):
        for f in (0, 1):
            for d in (0, 1):
                write(tmp_path, f"{plate}_A12f{f:02d}d{d}.TIF", f * 10 + d)
    assert detect_tiff_layout(tmp_path) is CellomicsReader
    with pytest.raises(SourceError, match=r"holds 2 plates \(AS_1_001, AS_1_002\).*plate="):
        CellomicsReader(tmp_path).describe()
    with pytest.raises(SourceError, match=r"no plate 'AS_9' here; plates: AS_1_001, AS_1_002"):
        CellomicsReader(tmp_path, plate="AS_9").describe()
    reader = CellomicsReader(tmp_path, plate="AS_1_002")
    desc = reader.describe()
    assert desc.name == "AS_1_002" and len(desc.files) == 4
    assert all("AS_1_002" in p.name for p in desc.files)
    assert [(f.well.name, f.name) for f in desc.fields] == [("A12", "00"), ("A12", "01")]
    px = reader.read_field(desc.fields[1], desc)
    assert px[0, :, 0, 0, 0].tolist() == [1000, 1100]
    assert pickle.loads(pickle.dumps(reader)).describe().fields == desc.fields


# -------------------------------------------------------------------- pattern


def test_pattern_flat_with_named_channels(tmp_path):
    for well in ("A01", "P24"):
        for s in ("1", "2"):
            for ch in ("GFP", "DAPI", "Cy5"):
                write(tmp_path, f"{well}_s{s}_{ch}.tif", ord(ch[0]))
    write(tmp_path, "notes_unrelated.tif")  # ignored: does not match
    assert not PatternReader.sniff(tmp_path)
    reader = PatternReader(tmp_path, pattern="{well}_s{field}_{channel}.tif")
    desc = reader.describe()
    assert desc.format == "pattern" and desc.name == tmp_path.name
    assert [c.name for c in desc.channels] == ["Cy5", "DAPI", "GFP"]  # alphabetical
    assert desc.plate_type == PLATE_TYPES[384]
    assert [(f.well.name, f.index, f.name) for f in desc.fields] == [
        ("A01", 0, "1"),
        ("A01", 1, "2"),
        ("P24", 0, "1"),
        ("P24", 1, "2"),
    ]
    assert desc.instrument["pattern"] == "{well}_s{field}_{channel}.tif"
    assert_round_trip(reader, desc)
    first_pixels = reader.read_field(desc.fields[0], desc)[0, :, 0, 0, 0]
    assert first_pixels.tolist() == [ord("C") * 100, ord("D") * 100, ord("G") * 100]


def test_pattern_plate_folders_row_col_numeric_channels_wildcard(tmp_path):
    for plate in ("P1", "P2"):
        for ch in ("10", "2"):
            for t in ("1", "2"):
                write(tmp_path, f"{plate}/C7-x{ch}t{t}-{ch}.tiff", int(ch) + 5 * int(t))
    pattern = "{plate}/{row}{column}-*t{t}-{channel}.tiff"
    with pytest.raises(SourceError, match=r"holds 2 plates \(P1, P2\)"):
        PatternReader(tmp_path, pattern=pattern).describe()
    reader = PatternReader(tmp_path, pattern=pattern, plate="P2")
    desc = reader.describe()
    assert desc.name == "P2" and desc.wells == [parse_well("C07")]
    assert [c.name for c in desc.channels] == ["2", "10"]  # numeric order
    assert desc.shape == (2, 2, 1, *SHAPE)
    px = reader.read_field(desc.fields[0], desc)
    assert px[:, :, 0, 0, 0].tolist() == [[700, 1500], [1200, 2000]]


def test_pattern_numeric_rows_and_no_channel(tmp_path):
    write(tmp_path, "r2c3.tif", 1)
    desc = PatternReader(tmp_path, pattern="r{row}c{col}.tif").describe()
    assert desc.wells == [parse_well("B03")] and [c.name for c in desc.channels] == ["c1"]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{field}_{channel}.tif", "names no well"),
        ("{row}_{channel}.tif", "names no well"),
        ("{well}_{site}.tif", r"unknown placeholder \{site\}"),
        ("{well_{channel}.tif", "unbalanced brace"),
        ("", "needs a pattern"),
    ],
)
def test_pattern_bad(tmp_path, pattern, message):
    with pytest.raises(SourceError, match=message):
        PatternReader(tmp_path, pattern=pattern).describe()


def test_pattern_matches_nothing(tmp_path):
    write(tmp_path, "A01-1.tif")
    message = r"no file matches the pattern '\{well\}_s\{field\}\.tif' \(e\.g\. 'A01-1\.tif'\)"
    with pytest.raises(SourceError, match=message):
        PatternReader(tmp_path, pattern="{well}_s{field}.tif").describe()


# --------------------------------------------------------------- bad inputs


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images")
    with pytest.raises(SourceError, match="no TIFF files"):
        detect_tiff_layout(tmp_path)
    with pytest.raises(SourceError, match="no TIFF files"):
        CellomicsReader(tmp_path).describe()
    with pytest.raises(SourceError, match="not a folder"):
        detect_tiff_layout(tmp_path / "readme.txt")
    assert not ImageXpressReader.sniff(tmp_path / "missing")


def test_unknown_naming(tmp_path):
    write(tmp_path, "image_0001.tif")
    message = r"'image_0001\.tif' match no known layout.*--pattern '\{well\}_s\{field\}_\{channel\}\.tif'"
    with pytest.raises(SourceError, match=message):
        detect_tiff_layout(tmp_path)
    with pytest.raises(SourceError, match=r"no file matches the opera naming \(e\.g\. 'image_0001\.tif'\)"):
        OperaReader(tmp_path).describe()


def test_missing_channel(tmp_path):
    for s in (1, 2):
        for w in (1, 2):
            if (s, w) != (2, 2):
                write(tmp_path, f"P_B03_s{s}_w{w}.tif")
    with pytest.raises(SourceError, match=r"B03 field 2 lacks channel w2 \(have w1\)"):
        ImageXpressReader(tmp_path).describe()


def test_missing_plane(tmp_path):
    for z in (1, 2):
        for w in (1, 2):
            if (z, w) != (2, 1):
                write(tmp_path, f"ZStep_{z}/P_B03_s1_w{w}.tif")
    with pytest.raises(SourceError, match=r"B03 field 1 lacks channel w1 z 2 \(have w2\)"):
        ImageXpressReader(tmp_path).describe()


def test_duplicate_file(tmp_path):
    write(tmp_path, "P_B03_s1_w1.tif")
    write(tmp_path, f"P_B03_s1_w1{GUID}.tif")
    message = rf"two files for B03 field 1 channel w1: .*P_B03_s1_w1\.tif and .*P_B03_s1_w1{GUID}\.tif"
    with pytest.raises(SourceError, match=message):
        ImageXpressReader(tmp_path).describe()


def test_mismatched_shape(tmp_path):
    for d in (0, 1, 2):
        write(tmp_path, f"AS_1_B02f00d{d}.tif", shape=(4, 4) if d == 1 else SHAPE)
    with pytest.raises(SourceError, match=r"AS_1_B02f00d1\.tif: image is 4x4 uint16, expected 6x8 uint16"):
        CellomicsReader(tmp_path).describe()


def test_mismatched_dtype(tmp_path):
    for d in (0, 1, 2):
        write(tmp_path, f"AS_1_B02f00d{d}.tif", dtype=np.uint8 if d == 2 else np.uint16)
    with pytest.raises(SourceError, match=r"AS_1_B02f00d2\.tif: image is 6x8 uint8, expected 6x8 uint16"):
        CellomicsReader(tmp_path).describe()


def test_truncated_tiff(tmp_path):
    write(tmp_path, "AS_1_B02f00d0.tif", shape=(64, 64))
    bad = tmp_path / "AS_1_B02f00d1.tif"
    write(tmp_path, bad.name, shape=(64, 64))
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(SourceError, match=r"AS_1_B02f00d1\.tif: truncated TIFF"):
        CellomicsReader(tmp_path).describe()


def test_not_a_tiff(tmp_path):
    write(tmp_path, "AS_1_B02f00d0.tif")
    (tmp_path / "AS_1_B02f00d1.tif").write_bytes(b"PK\x03\x04 this is a zip file, not a TIFF")
    with pytest.raises(SourceError, match=r"AS_1_B02f00d1\.tif: not a readable TIFF"):
        CellomicsReader(tmp_path).describe()


def test_stack_and_rgb_tiffs_refused(tmp_path):
    stack = np.zeros((3, *SHAPE), np.uint16)
    tifffile.imwrite(tmp_path / "AS_1_B02f00d0.tif", stack, photometric="minisblack")
    with pytest.raises(SourceError, match=r"AS_1_B02f00d0\.tif: holds 3 images"):
        CellomicsReader(tmp_path).describe()
    tifffile.imwrite(tmp_path / "AS_1_B02f00d0.tif", np.zeros((*SHAPE, 3), np.uint8), photometric="rgb")
    with pytest.raises(SourceError, match=r"AS_1_B02f00d0\.tif: image of shape \(6, 8, 3\)"):
        CellomicsReader(tmp_path).describe()


def test_read_field_errors_name_the_file(tmp_path):
    write(tmp_path, "AS_1_B02f00d0.tif")
    write(tmp_path, "AS_1_B02f00d1.tif")
    reader = CellomicsReader(tmp_path)
    desc = reader.describe()
    write(tmp_path, "AS_1_B02f00d1.tif", shape=(3, 3))  # changed after describe()
    with pytest.raises(SourceError, match=r"AS_1_B02f00d1\.tif: image is 3x3 uint16, expected 6x8 uint16"):
        reader.read_field(desc.fields[0], desc)
    (tmp_path / "AS_1_B02f00d0.tif").write_bytes(b"garbage")
    with pytest.raises(SourceError, match=r"AS_1_B02f00d0\.tif: cannot read TIFF pixels"):
        reader.read_field(desc.fields[0], desc)
    (tmp_path / "AS_1_B02f00d0.tif").unlink()
    with pytest.raises(SourceError, match=r"AS_1_B02f00d0\.tif: cannot read TIFF pixels"):
        reader.read_field(desc.fields[0], desc)
