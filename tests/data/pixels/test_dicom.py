"""DICOM input: decoding as a reading workstation shows it, clear refusals, and DICOM files used by
training and evaluation like PNGs. Every file is written here with pydicom."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from conftest import run_cli, write_dicom, write_png
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless, RLELossless

from lungcls.data.pixels.images import is_image_file, load_image, read_gray
from lungcls.errors import LungclsError
from lungcls.train import train


def read_small(path):
    """The decoded pixels of a test file a few pixels wide (the smallest-side check has its own tests)."""
    return read_gray(path, min_side=None)


def ramp(top: int, shape=(8, 16)) -> np.ndarray:
    return np.linspace(0, top, shape[0] * shape[1]).reshape(shape).round().astype(np.uint16)


def test_12_and_16_bit_data_are_scaled_by_the_range_their_bits_hold(tmp_path):
    img12 = ramp(4095)
    got = read_small(write_dicom(tmp_path / "a.dcm", img12, bits_stored=12))
    assert got.dtype == np.uint8 and got.shape == img12.shape
    assert np.abs(got.astype(int) - np.round(img12 / 4095 * 255)).max() <= 1
    # 12-bit data in a 16-bit file is not stretched: a dark 12-bit image stays dark
    dark = (ramp(4095) // 4).astype(np.uint16)
    assert read_small(write_dicom(tmp_path / "b.dcm", dark, bits_stored=12)).max() == pytest.approx(64, abs=1)
    img16 = ramp(65535)
    got16 = read_small(write_dicom(tmp_path / "c.dcm", img16, bits_stored=16))
    assert np.abs(got16.astype(int) - np.round(img16 / 65535 * 255)).max() <= 1
    eight = np.arange(128, dtype=np.uint8).reshape(8, 16)
    assert np.array_equal(read_small(write_dicom(tmp_path / "d.dcm", eight)), eight)


def test_monochrome1_is_inverted(tmp_path):
    img = ramp(4095)
    m2 = read_small(write_dicom(tmp_path / "m2.dcm", img, bits_stored=12))
    m1 = read_small(write_dicom(tmp_path / "m1.dcm", img, photometric="MONOCHROME1", bits_stored=12))
    assert np.abs(m1.astype(int) - (255 - m2.astype(int))).max() <= 1
    assert m1[0, 0] == 255 and m1[-1, -1] == 0


def test_window_and_rescale_are_applied(tmp_path):
    img = ramp(4095)
    # a window of 1000..2000 (linear, DICOM's centre/width convention): below -> black, above -> white
    got = read_small(write_dicom(tmp_path / "w.dcm", img, bits_stored=12, WindowCenter=1500.5, WindowWidth=1001))
    assert got[img <= 990].max() == 0 and got[img >= 2010].min() == 255
    middle = (img > 1100) & (img < 1900)
    expected = (img[middle].astype(float) - 1000) / 1000 * 255
    assert np.abs(got[middle] - expected).max() <= 2
    # the window is in rescaled units: slope 2, intercept -1000 maps stored 1250 -> 1500
    got_r = read_small(write_dicom(tmp_path / "r.dcm", img, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
                                  WindowCenter=1500.5, WindowWidth=1001))
    assert got_r[img <= 990 // 2 + 500].max() == 0 and got_r[img >= 2010 // 2 + 500].min() == 255


def test_a_voi_lut_sequence_is_applied(tmp_path):
    img = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 256)  # 0..3840, 12-bit
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 8]  # 4096 entries from value 0, 8-bit output
    lut.add_new(0x00283006, "US", [255 - v // 16 for v in range(4096)])  # LUT Data: a LUT that inverts
    ds_path = write_dicom(tmp_path / "lut.dcm", img, bits_stored=12, VOILUTSequence=[lut])
    got = read_small(ds_path)
    assert np.abs(got.astype(int) - (255 - img // 16)).max() <= 1


def test_rle_compressed_files_decode_like_uncompressed_ones(tmp_path):
    img = ramp(4095)
    plain = read_small(write_dicom(tmp_path / "plain.dcm", img, bits_stored=12))
    rle = read_small(write_dicom(tmp_path / "rle.dcm", img, bits_stored=12, transfer_syntax=RLELossless))
    assert np.array_equal(plain, rle)


def test_multi_frame_and_undecodable_compression_are_refused_with_one_line(tmp_path):
    with pytest.raises(LungclsError, match="has 2 frames") as e:
        read_small(write_dicom(tmp_path / "mf.dcm", np.stack([ramp(4095)] * 2), bits_stored=12))
    assert "\n" not in str(e.value)
    from pydicom import dcmread
    from pydicom.encaps import encapsulate

    path = write_dicom(tmp_path / "jls.dcm", ramp(4095), bits_stored=12)
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 30])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(LungclsError, match="compressed with JPEG-LS Lossless") as e:
        read_gray(path)
    assert "\n" not in str(e.value) and "pylibjpeg" in str(e.value)
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(LungclsError, match="junk.dcm"):
        read_gray(tmp_path / "junk.dcm")


def test_format_is_told_by_content_and_pixel_limits_apply_before_decoding(tmp_path):
    img = ramp(4095, (40, 50))
    no_ext = write_dicom(tmp_path / "IM0001", img, bits_stored=12)  # PACS exports often have no extension
    assert read_gray(no_ext).shape == (40, 50)
    data = no_ext.read_bytes()
    assert np.array_equal(read_gray(io.BytesIO(data), name="upload"), read_gray(no_ext))
    with pytest.raises(LungclsError, match="40x50 = 2,000 pixels, more than dataset.max_image_pixels=1,000"):
        read_gray(io.BytesIO(data), max_pixels=1000, name="upload")
    png = write_png(tmp_path / "x.png", np.zeros((40, 50), np.uint8))
    with pytest.raises(LungclsError, match="50x40 = 2,000 pixels, more than dataset.max_image_pixels"):
        read_gray(png, max_pixels=1000)
    assert is_image_file(tmp_path / "x.png") and is_image_file(write_dicom(tmp_path / "y.DCM", img, bits_stored=12))
    # a PNG named .dcm is read as the PNG it is; a .dcm without the Part 10 preamble is still DICOM
    (tmp_path / "png.dcm").write_bytes(png.read_bytes())
    assert read_gray(tmp_path / "png.dcm").shape == (40, 50)
    (tmp_path / "bare.dcm").write_bytes(no_ext.read_bytes()[132:])
    assert np.array_equal(read_gray(tmp_path / "bare.dcm"), read_gray(no_ext))


def _dicom_class_tree(root, n=10, size=40):
    """Classes that differ in brightness, stored as 12-bit DICOM (MONOCHROME1 for one class), with
    one PNG among them."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(["COVID", "Normal", "Viral Pneumonia"]):
        for i in range(n):
            level = (60 + 50 * k) * 16
            arr = np.clip(rng.normal(level, 300, (size, size)), 0, 4095).astype(np.uint16)
            if name == "Viral Pneumonia":
                write_dicom(root / name / f"{name}-{i}.dcm", 4095 - arr, photometric="MONOCHROME1", bits_stored=12)
            else:
                write_dicom(root / name / f"{name}-{i}.dcm", arr, bits_stored=12)
    write_png(root / "Normal" / "extra.png", np.full((size, size), 110, np.uint8))
    (root / "Normal" / "notes.txt").write_text("not an image")
    return root


@pytest.mark.slow
def test_training_and_evaluation_read_dicom_folders(train_cfg, tmp_path):
    root = _dicom_class_tree(tmp_path / "dicom")
    run = tmp_path / "run"
    cfg = train_cfg("dataset=folder", f"dataset.root={root}", "dataset.classes=[COVID,Normal,Viral Pneumonia]",
                    "backbone=logistic", "dataset.normalization=half", "trainer.max_epochs=2", out=run)
    train(cfg)
    with (run / "splits.csv").open() as f:
        rows = f.read().splitlines()[1:]
    assert len(rows) == 31 and sum(r.split(",")[0].endswith(".dcm") for r in rows) == 30
    # MONOCHROME1 images are shown inverted back: same brightness as their stored complement
    vp = load_image(root / "Viral Pneumonia" / "Viral Pneumonia-0.dcm", 40).float().mean()
    assert 150 < float(vp) < 190
    ev = tmp_path / "ev"
    out = run_cli("lungcls.evaluate", f"ckpt={run}/checkpoints/best.ckpt", f"hydra.run.dir={ev}", "dataset=folder",
                  f"dataset.root={root}", "dataset.classes=[COVID,Normal,Viral Pneumonia]", "dataset.split=all")
    assert out.returncode == 0, out.stderr
    # scoring the whole folder leaves out the images the checkpoint was trained on
    with (run / "splits.csv").open() as f:
        held_out = sum(r["split"] != "train" for r in csv.DictReader(f))
    got = json.loads((ev / "metrics.json").read_text())["all"]
    assert 0 < held_out < 31 and sum(v["support"] for v in got["per_class"].values()) == held_out
    ev_all = tmp_path / "ev_all"
    out = run_cli("lungcls.evaluate", f"ckpt={run}/checkpoints/best.ckpt", f"hydra.run.dir={ev_all}", "dataset=folder",
                  f"dataset.root={root}", "dataset.classes=[COVID,Normal,Viral Pneumonia]", "dataset.split=all",
                  "evaluate.exclude_training_images=false")
    assert out.returncode == 0, out.stderr
    got = json.loads((ev_all / "metrics.json").read_text())["all"]
    assert sum(v["support"] for v in got["per_class"].values()) == 31


def test_a_file_cut_off_in_its_header_is_called_truncated_and_reader_warnings_are_one_line(tmp_path, caplog, capfd):
    """A header length that runs past the file's end made pydicom warn once per 512 bytes, quoting
    them raw, before the error called the file 'no image': now one summary line, and 'truncated'."""
    import logging

    whole = write_dicom(tmp_path / "whole.dcm", ramp(4095, (64, 64)), bits_stored=12).read_bytes()
    at = whole.index(b"\x02\x00\x10\x00UI")  # (0002,0010) Transfer Syntax UID, explicit VR: 2-byte length
    huge = tmp_path / "huge.dcm"
    huge.write_bytes(whole[: at + 6] + b"\xff\xf0" + whole[at + 8 :])
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[:400])
    said = {}
    for path in (huge, cut):
        caplog.clear()
        with caplog.at_level(logging.WARNING), pytest.raises(LungclsError, match=f"DICOM .*{path.name} is truncated or damaged"):
            read_gray(path)
        said[path.name] = [r.getMessage() for r in caplog.records]
    assert len(said["huge.dcm"]) == 1 and "warning(s) from the reader" in said["huge.dcm"][0] and len(said["huge.dcm"][0]) < 300
    assert len(said["cut.dcm"]) <= 1
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 500  # nothing printed around the logging system
