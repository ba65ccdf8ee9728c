"""Mitigations of source bias: crop_border, equalize=clahe and mask_outside_lungs change what the
model sees at decode time (training, evaluation and the cache alike); augment=site imitates sites."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, compose_cfg, write_png
from lungcls.data.cache.decoded import load_or_decode
from lungcls.data.augment.build import build_augment
from lungcls.data.datamodule import LungDataModule
from lungcls.data.pixels.images import load_image
from lungcls.data.pixels.preprocess import preprocess_from
from lungcls.errors import LungclsError

OFF = {"crop_border": 0.0, "equalize": "none", "mask_outside_lungs": False, "clahe_clip_limit": 2.0, "clahe_grid": 8}


def framed(tmp_path, name="x.png", size=100, band=10, gamma=1.0):
    """A textured film inside a bright 10-pixel collimation frame; its lung mask is the centre."""
    rng = np.random.default_rng(0)
    inner = rng.uniform(0.2, 0.6, (size, size)) ** gamma
    arr = np.full((size, size), 250, np.uint8)
    arr[band:-band, band:-band] = (inner[band:-band, band:-band] * 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[30:70, 20:80] = 255
    image = write_png(tmp_path / "images" / name, arr)
    write_png(tmp_path / "masks" / name, mask)
    return image, tmp_path / "masks" / name


def test_crop_border_removes_the_collimation_frame_before_resizing(tmp_path):
    image, _ = framed(tmp_path)
    plain = load_image(image, 40, preprocess=preprocess_from(OFF))
    cropped = load_image(image, 40, preprocess=preprocess_from({**OFF, "crop_border": 0.15}))
    assert plain.shape == cropped.shape == (1, 40, 40)
    assert plain[0, 0].float().mean() > 240  # the frame is there...
    assert cropped[0, 0].float().mean() < 200 and cropped.max() < 250  # ...and gone, at the same size


def test_clahe_spreads_a_flat_exposure_over_the_grey_range(tmp_path):
    from lungcls.data.phantom.demo import render_demo_case

    film = render_demo_case("COVID", 3, 128).image.astype(np.float32)
    flat = write_png(tmp_path / "flat.png", (110 + film / 255 * 30).astype(np.uint8))  # a washed-out exposure
    plain = load_image(flat, 128, preprocess=preprocess_from(OFF)).float()
    equalised = load_image(flat, 128, preprocess=preprocess_from({**OFF, "equalize": "clahe"})).float()
    assert equalised.std() > 1.5 * plain.std()  # measured 1.9x at the default clip limit
    unlimited = load_image(flat, 128, preprocess=preprocess_from({**OFF, "equalize": "clahe", "clahe_clip_limit": 0.0}))
    assert unlimited.float().std() > equalised.std()  # the contrast limit is what it says


def test_mask_outside_lungs_fills_with_the_image_mean_and_needs_masks(tmp_path):
    image, mask = framed(tmp_path)
    masked = load_image(image, 100, preprocess=preprocess_from({**OFF, "mask_outside_lungs": True}), mask=mask)[0].numpy()
    outside = masked[np.ones((100, 100), bool) & ~(np.pad(np.ones((40, 60), bool), ((30, 30), (20, 20))))]
    assert len(np.unique(outside)) == 1 and 60 < outside[0] < 200  # one value, the mean: no frame left
    with pytest.raises(LungclsError, match="has no lung mask"):
        load_image(image, 100, preprocess=preprocess_from({**OFF, "mask_outside_lungs": True}))


def test_bad_values_and_old_checkpoints():
    with pytest.raises(LungclsError, match=r"dataset.crop_border=0.45 must be in \[0.0, 0.4\]"):
        preprocess_from({**OFF, "crop_border": 0.45})
    with pytest.raises(LungclsError, match="dataset.equalize=hist is not one of none, clahe"):
        preprocess_from({**OFF, "equalize": "hist"})
    with pytest.raises(LungclsError, match="must be true or false"):
        preprocess_from({**OFF, "mask_outside_lungs": "yes"})
    assert not preprocess_from({"image_size": 64}).active  # a checkpoint's data config from before the keys


def test_the_cache_keeps_each_preprocessing_apart(tmp_path):
    image, _ = framed(tmp_path)
    paths = [str(image)]
    plain = load_or_decode(paths, 32, tmp_path / "cache", preprocess=preprocess_from(OFF))
    cropped = load_or_decode(paths, 32, tmp_path / "cache", preprocess=preprocess_from({**OFF, "crop_border": 0.2}))
    assert not torch.equal(plain, cropped)
    assert len(list((tmp_path / "cache").glob("images-32px-*.pt"))) == 2


def test_training_and_evaluation_decode_the_demo_through_the_mitigations(tmp_path, data_dir):
    def images(*overrides):
        cfg = compose_cfg("train", TINY + list(overrides), tmp_path, data_dir)
        dm = LungDataModule(OmegaConf.to_container(cfg.dataset, resolve=True))
        dm.setup()
        return dm.images.float()

    plain, masked = images(), images("dataset.mask_outside_lungs=true", "dataset.crop_border=0.1")
    assert plain.shape == masked.shape
    corner = masked[:, 0, :4, :4].flatten(1)
    assert (corner.max(1).values - corner.min(1).values).max() <= 1  # outside the lungs: one flat value per image
    assert not torch.equal(plain, masked)


def test_augment_site_changes_tone_noise_and_border_and_keeps_the_range():
    from hydra import compose, initialize_config_dir

    from lungcls.cli import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="train", overrides=["augment=site"])
    aug = build_augment(OmegaConf.to_container(cfg.augment), 32)
    torch.manual_seed(0)
    x = torch.full((16, 1, 32, 32), 0.5)
    y = aug(x)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert y.mean(dim=(1, 2, 3)).std() > 0.02  # each image got its own tone curve
    with pytest.raises(LungclsError, match=r"augment.border_crop=0.5 must be a share of the side in \[0, 0.4\]"):
        build_augment({**OmegaConf.to_container(cfg.augment), "border_crop": 0.5}, 32)


def test_prediction_decodes_as_the_checkpoint_was_trained(logistic_run, tmp_path):
    from lungcls.inference.prediction import predict_arrays, predict_files
    from lungcls.inference.checkpoints import load_classifier

    model = load_classifier(str(logistic_run / "checkpoints" / "best.ckpt"), map_location="cpu")
    assert not preprocess_from(dict(model.hparams["data"])).active  # trained without mitigations
    image, _ = framed(tmp_path)
    before = predict_files(model, [str(image)]).probs
    model.hparams["data"]["crop_border"] = 0.3  # as a checkpoint trained with dataset.crop_border=0.3 records it
    after = predict_files(model, [str(image)]).probs
    assert not np.allclose(before, after)
    from lungcls.data.pixels.images import read_gray

    assert np.allclose(predict_arrays(model, [read_gray(image)]), after, atol=1e-6)  # the web service's path agrees


def test_resume_keeps_the_decoding_and_accepts_checkpoints_from_before_the_keys(tmp_path):
    from lungcls.training.resume import check_resume

    before = {"layout": "demo", "classes": ["COVID", "Normal"], "demo": {"images_per_class": 12, "shortcut": 0}}
    now = {**before, **OFF, "source_column": None, "source_from": None, "source_regex": None,
           "demo": {**before["demo"], "sources": 1, "source_bias": 0}}
    ckpt = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {"data": before}}, ckpt)
    check_resume(str(ckpt), {"data": now})  # an older checkpoint: same data, same pixels
    with pytest.raises(LungclsError, match="was trained with dataset.crop_border=0.0, not 0.2"):
        check_resume(str(ckpt), {"data": {**now, "crop_border": 0.2}})


def lung_masked_checkpoint(logistic_run, tmp_path):
    """The tiny run's checkpoint as if it had been trained with dataset.mask_outside_lungs=true."""
    content = torch.load(logistic_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    content["hyper_parameters"]["data"] = {**content["hyper_parameters"]["data"], "mask_outside_lungs": True}
    path = tmp_path / "masked.ckpt"
    torch.save(content, path)
    return path


def test_a_lung_masked_model_is_refused_where_images_come_without_masks_and_explained_with_them(logistic_run, tmp_path,
                                                                                             data_dir, monkeypatch):
    """serve (uploads) and predict (loose files) refuse it in one line before reading an image; the
    report decodes as training did: with each image's lung mask, and one line without it."""
    from lungcls.explain.maps.explainer import ReportImage, ReportModel, image_batch
    from lungcls.inference.checkpoints import load_checkpoint
    from lungcls.predict import predict
    from lungcls.serve.__main__ import serve

    def never_serve(*_):
        raise AssertionError("the service started with a model it cannot run on uploads")

    monkeypatch.setattr("lungcls.serve.__main__.bind", never_serve)
    ckpt = lung_masked_checkpoint(logistic_run, tmp_path)
    image, mask = framed(tmp_path)
    for command, run, overrides, what in (("serve", serve, ["serve.port=0"], "uploads"),
                                          ("predict", predict, [f"input={image}"], "files given to lungcls-predict")):
        cfg = compose_cfg(command, [f"ckpt={ckpt}", *overrides], tmp_path / command, data_dir)
        with pytest.raises(LungclsError, match=f"needs each image's lung mask, which {what} do not carry; .*ckpt={ckpt}"):
            run(cfg)
    assert not (tmp_path / "predict" / "predictions.csv").exists()
    model = ReportModel.of(load_checkpoint(str(ckpt)))
    size = model.image_size
    x = image_batch([ReportImage(str(image), mask=str(mask))], model)
    expected = load_image(image, size, preprocess=preprocess_from({**OFF, "mask_outside_lungs": True}), mask=mask)
    assert torch.equal((x * 255).round().to(torch.uint8), expected[None])
    assert not torch.equal(expected, load_image(image, size))  # the raw film differs: masking happened
    with pytest.raises(LungclsError, match="has no lung mask"):
        image_batch([ReportImage(str(image))], model)
