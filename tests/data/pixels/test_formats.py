"""The one reader every command decodes through refuses what no X-ray workflow produces: formats
other than PNG, JPEG and DICOM (told by content, whatever the file is called) and images with a
side under ``min_side`` pixels (icons, thumbnails), each with one line."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import make_class_tree, write_png
from PIL import Image

from lungcls.data.pixels.images import load_image, read_gray
from lungcls.errors import LungclsError
from lungcls.train import train

PICTURE = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP", "WEBP"])
def test_other_formats_are_refused_by_content_whatever_the_name(tmp_path, fmt):
    for name in (f"x.{fmt.lower()}", "renamed.png", "renamed.jpg", "renamed.dcm"):
        path = tmp_path / name
        Image.fromarray(PICTURE).save(path, format=fmt)
        with pytest.raises(LungclsError, match=f"{name} is a {fmt} image; lungcls reads PNG, JPEG and DICOM X-rays: convert it to PNG"):
            read_gray(path)
        with pytest.raises(LungclsError, match=f"is a {fmt} image"):
            load_image(path, 32)  # what training and evaluation call
    for fmt in ("PNG", "JPEG"):  # the formats read stay read, from files and uploads
        data = io.BytesIO()
        Image.fromarray(PICTURE).save(data, format=fmt)
        (tmp_path / f"ok.{fmt}").write_bytes(data.getvalue())
        assert read_gray(tmp_path / f"ok.{fmt}").shape == read_gray(data, name="upload").shape == (48, 64)


def test_an_image_with_a_side_under_min_side_is_refused(tmp_path):
    icon = write_png(tmp_path / "icon.png", np.full((1, 1), 128, np.uint8))
    with pytest.raises(LungclsError, match=r"icon.png is 1x1 pixels, smaller than the 32 pixels an X-ray has at least"):
        load_image(icon, 64)
    strip = write_png(tmp_path / "strip.png", np.zeros((31, 400), np.uint8))
    with pytest.raises(LungclsError, match=r"strip.png is 400x31 pixels, smaller than predict.min_side=32"):
        read_gray(strip, side_key="predict.min_side")
    assert read_gray(strip, min_side=31).shape == (31, 400)
    assert read_gray(write_png(tmp_path / "ok.png", np.zeros((32, 32), np.uint8))).shape == (32, 32)


def test_training_refuses_an_icon_in_its_data_before_training(tmp_path, train_cfg):
    tree = make_class_tree(tmp_path / "tree", {"COVID": 6, "Normal": 6})
    write_png(tree / "Normal" / "images" / "icon.png", np.full((1, 1), 200, np.uint8))
    cfg = train_cfg("dataset=folder", f"dataset.root={tree}", "dataset.classes=[COVID,Normal]", "dataset.image_size=32",
                    "backbone=logistic", "trainer.max_epochs=1")
    with pytest.raises(LungclsError, match="icon.png is 1x1 pixels"):
        train(cfg)
    assert not list(tmp_path.glob("**/checkpoints/*.ckpt"))
