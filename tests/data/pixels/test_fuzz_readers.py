"""Property-based fuzzing of every decoder path with Hypothesis: mutated PNG, JPEG and DICOM bytes
(bytes changed, inserted, cut off) through ``load_image``, the DICOM reader, ``lungcls-predict`` and
the web service give a result or the one-line error (a skipped row, a 400 JSON), never another
exception. Seeded (``derandomize``) and bounded: a few hundred cases here, thousands with
``pytest -m slow``."""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_dicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lungcls.data.pixels.dicom import read_dicom
from lungcls.data.pixels.images import load_image
from lungcls.errors import LungclsError

SIZE = 32


def _seed_files() -> dict[str, bytes]:
    """Small valid files to mutate: an 8-bit PNG, a 16-bit PNG, a JPEG and a windowed 12-bit DICOM."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (40, 36), dtype=np.uint8)
    out = {}
    for name, img, fmt in (("png8", Image.fromarray(gray), "PNG"), ("png16", Image.fromarray(gray.astype(np.uint16) * 200), "PNG"),
                           ("jpeg", Image.fromarray(gray), "JPEG")):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out[name] = buf.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dicom(Path(tmp) / "seed.dcm", (gray.astype(np.uint16) * 16), bits_stored=12,
                           WindowCenter=2048, WindowWidth=4000, RescaleSlope=1, RescaleIntercept=0)
        out["dicom"] = path.read_bytes()
    return out


SEEDS = _seed_files()
SUFFIX = {"png8": ".png", "png16": ".png", "jpeg": ".jpg", "dicom": ".dcm"}


@st.composite
def mutated(draw, kinds=tuple(SEEDS)) -> tuple[str, bytes]:
    """(kind, bytes): a seed file with a few bytes replaced (the header most often), some inserted,
    and maybe cut off."""
    kind = draw(st.sampled_from(kinds))
    data = bytearray(SEEDS[kind])
    header = min(len(data), 400)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.one_of(st.integers(0, header - 1), st.integers(0, len(data) - 1)))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=8))
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return kind, bytes(data)


def _one_line_or_image(call) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom and Pillow warn about what they repair
            result = call()
    except LungclsError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert result.dtype in (np.uint8,) or str(result.dtype) == "torch.uint8"


def _check_load_image(kind: str, data: bytes, folder: Path) -> None:
    path = folder / f"fuzz{SUFFIX[kind]}"
    path.write_bytes(data)
    _one_line_or_image(lambda: load_image(path, SIZE))


def _check_dicom_reader(data: bytes) -> None:
    _one_line_or_image(lambda: read_dicom(io.BytesIO(data), "fuzz.dcm", 10_000_000))


FAST = settings(derandomize=True, max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(derandomize=True, max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FAST
@given(mutated())
def test_load_image_on_mutated_png_jpeg_dicom(folder, case):
    _check_load_image(*case, folder)


@FAST
@given(mutated(("dicom",)))
def test_dicom_reader_on_mutated_dicom(case):
    _check_dicom_reader(case[1])


@pytest.mark.slow
@SLOW
@given(mutated())
def test_load_image_on_many_mutated_files(folder, case):
    _check_load_image(*case, folder)


@pytest.mark.slow
@SLOW
@given(mutated(("dicom",)))
def test_dicom_reader_on_many_mutated_dicoms(case):
    _check_dicom_reader(case[1])


# ------------------------------------------------------------------ lungcls-predict and the service


@pytest.fixture(scope="module")
def predict_cfg(logistic_run, tmp_path_factory):
    """``lungcls-predict`` composed as the command composes it, skipping unreadable files."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from lungcls.cli import CONF_DIR

    def make(input_folder: Path, out: Path):
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose(config_name="predict", overrides=[f"ckpt={logistic_run}/checkpoints/best.ckpt", f"input={input_folder}",
                                                            "predict.skip_unreadable=true", "predict.normal_margin=0"])
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
        return cfg

    return make


def _check_predict(predict_cfg, cases, base: Path) -> None:
    import csv

    from lungcls.predict import predict

    base.mkdir(parents=True, exist_ok=True)
    inputs = base / "in"
    inputs.mkdir()
    for i, (kind, data) in enumerate(cases):
        (inputs / f"f{i:02d}{SUFFIX[kind]}").write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predict(predict_cfg(inputs, base / "out"))
    except LungclsError as e:  # only when no file at all is an image lungcls reads
        assert "\n" not in str(e)
        return
    rows = list(csv.DictReader((base / "out" / "predictions.csv").open()))
    assert len(rows) == len(cases)
    assert all(bool(r["pred"]) != bool(r["error"]) and "\n" not in r["error"] for r in rows)


@settings(derandomize=True, max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(("dicom",)), min_size=8, max_size=8), st.lists(mutated(), min_size=8, max_size=8))
def test_predict_lists_mutated_files_as_scored_or_unreadable(predict_cfg, folder, dicoms, others):
    _check_predict(predict_cfg, dicoms + others, Path(tempfile.mkdtemp(dir=folder)))


@pytest.mark.slow
@settings(derandomize=True, max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=25, max_size=25))
def test_predict_on_many_mutated_files(predict_cfg, folder, cases):
    _check_predict(predict_cfg, cases, Path(tempfile.mkdtemp(dir=folder)))


@pytest.fixture(scope="module")
def client(logistic_run):
    """The service's application in-process (FastAPI's TestClient), with the default limits."""
    from fastapi.testclient import TestClient
    from hydra import compose, initialize_config_dir

    from lungcls.cli import CONF_DIR
    from lungcls.explain.maps.explainer import ReportModel
    from lungcls.inference.checkpoints import load_checkpoints
    from lungcls.inference.scoring import UsedModel
    from lungcls.serve.app import create_app
    from lungcls.serve.settings import ServeSettings
    from lungcls.settings import typed

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="serve", overrides=[f"ckpt={logistic_run}/checkpoints/best.ckpt"])
    settings_ = typed(cfg.serve, ServeSettings, "serve")
    models = [UsedModel(ReportModel.of(m), None, 0.1) for m in load_checkpoints(cfg.ckpt, torch.device("cpu"))]
    app, batcher = create_app(models, settings_)
    with TestClient(app) as c:
        yield c
    batcher.close()


def _check_service(client, kind: str, data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = client.post("/api/predict?cam=false", files={"file": (f"fuzz{SUFFIX[kind]}", data)})
    assert r.status_code in (200, 400), r.text
    body = r.json()
    if r.status_code == 400:
        assert body["error"] and "\n" not in body["error"]
    else:
        assert body["results"][0]["models"]


@settings(derandomize=True, max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_service_answers_mutated_uploads_with_a_result_or_400(client, case):
    _check_service(client, *case)


@pytest.mark.slow
@SLOW
@given(mutated())
def test_service_on_many_mutated_uploads(client, case):
    _check_service(client, *case)
