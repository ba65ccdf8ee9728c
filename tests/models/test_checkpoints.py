"""One checkpoint loader: every command resolves a checkpoint argument the same way, reads it
safely, upgrades an earlier release's hyper-parameters on load, and hands back typed ones."""

from __future__ import annotations

import pytest
import torch

from lungcls.errors import LungclsError
from lungcls.inference.checkpoints import checkpoint_file, checkpoint_files, load_checkpoint, load_checkpoints
from lungcls.models.module import LungClassifier
from lungcls.training.resume import check_resume

CLASSES = ["COVID", "Normal", "Viral Pneumonia"]


def previous_format_checkpoint(path):
    """A checkpoint as the first releases wrote it: a scheduler named rather than targeted, a loss
    without a target, a data config from before decode-time mitigations and demo sites, and a
    key this release no longer takes."""
    model = LungClassifier({"name": "logistic", "input_size": 16}, {"name": "full"}, CLASSES, image_size=32,
                           mean=(0.4,), std=(0.2,)).eval()
    hparams = dict(model.hparams)
    hparams.update(
        scheduler={"name": "cosine"},
        loss={"label_smoothing": 0.0},
        data={"name": "demo", "layout": "demo", "image_size": 32, "demo": {"images_per_class": 4, "shortcut": 0}},
        retired_key=1,
    )
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.0.0"}, path)
    return model


def test_a_previous_format_checkpoint_loads_upgraded_and_typed(tmp_path):
    path = tmp_path / "old.ckpt"
    original = previous_format_checkpoint(path)
    loaded = load_checkpoint(str(path))
    model = loaded.model
    assert model.hparams.scheduler["_target_"] == "lungcls.models.schedulers.cosine"
    assert model.hparams.loss["_target_"] == "lungcls.models.losses.CrossEntropy"
    info = loaded.info
    assert (info.image_size, info.class_names, info.normal_class, info.backbone) == (32, tuple(CLASSES), "Normal", "logistic")
    assert info.mean == pytest.approx((0.4,)) and info.std == pytest.approx((0.2,))
    assert info.data["crop_border"] == 0.0 and info.data["mask_outside_lungs"] is False and info.data["equalize"] == "none"
    assert info.data["demo"] == {"images_per_class": 4, "shortcut": 0, "sources": 1, "source_bias": 0}
    assert not info.preprocess.active
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), original(x))
    assert loaded.name == "logistic/full (" + tmp_path.name + ")" and loaded.run is None
    assert len(loaded.sha256) == 64


def test_resuming_reads_the_same_upgraded_settings(tmp_path):
    path = tmp_path / "old.ckpt"
    previous_format_checkpoint(path)
    now = {"name": "demo", "layout": "demo", "image_size": 32, "demo": {"images_per_class": 4, "shortcut": 0, "sources": 1,
           "source_bias": 0}, "crop_border": 0.0, "equalize": "none", "mask_outside_lungs": False, "clahe_clip_limit": 2.0,
           "clahe_grid": 8}
    check_resume(str(path), {"data": now, "backbone": {"name": "logistic"}, "finetune": {"name": "full"}})
    with pytest.raises(LungclsError, match=r"trained with dataset.demo="):
        check_resume(str(path), {"data": {**now, "demo": {**now["demo"], "sources": 3}}})


@pytest.mark.parametrize("key, expect", [("ckpt", "best.ckpt"), ("ckpt_path", "last.ckpt")])
def test_one_wording_for_every_bad_checkpoint_argument(tmp_path, key, expect):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    folder = tmp_path / "run"
    with pytest.raises(LungclsError) as e:
        checkpoint_file(str(folder), key, expect)
    assert str(e.value) == f"{key}={folder} is a folder, not a checkpoint file; give a file in it, e.g. {key}={folder / 'checkpoints' / expect}"
    with pytest.raises(LungclsError) as e:
        checkpoint_file(str(tmp_path / "gone.ckpt"), key, expect)
    assert str(e.value) == f"{key}={tmp_path / 'gone.ckpt'} does not exist; give the path of a run's checkpoints/{expect}"
    with pytest.raises(LungclsError, match=f"no checkpoint given; pass {key}="):
        checkpoint_file(" ", key, expect)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(LungclsError, match=rf"{key}=.*notes.ckpt is not a readable lungcls checkpoint .*checkpoints/{expect}"):
        check_resume(str(text), {"data": {}}) if key == "ckpt_path" else load_checkpoint(str(text))


def test_a_list_of_checkpoints_is_checked_before_any_is_read(tmp_path):
    path = tmp_path / "old.ckpt"
    previous_format_checkpoint(path)
    with pytest.raises(LungclsError, match="lists the same checkpoint twice"):
        checkpoint_files([str(path), str(tmp_path / "." / "old.ckpt")])
    with pytest.raises(LungclsError, match="missing.ckpt does not exist"):
        load_checkpoints([str(path), str(tmp_path / "missing.ckpt")])
    copy = tmp_path / "b" / "old.ckpt"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    names = [m.name for m in load_checkpoints([str(path), str(copy)])]
    assert len(set(names)) == 2
