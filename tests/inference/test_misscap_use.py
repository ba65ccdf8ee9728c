"""The cap where decisions are made: lungcls-predict and lungcls-serve say "Normal" or "refer" at
the threshold the evaluation of the same checkpoint chose, and refuse an evaluation of another file."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lungcls.errors import LungclsError
from lungcls.evaluate import evaluate
from lungcls.predict import predict

from conftest import REPO, compose_cfg

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "") if p and Path(p).is_file()), None)


@pytest.fixture(scope="module")
def capped(logistic_run, data_dir, tmp_path_factory):
    """An evaluation of the shared logistic run with a miss-rate cap, and the images to predict."""
    out = tmp_path_factory.mktemp("capped") / "ev"
    evaluate(compose_cfg("evaluate", [f"ckpt={logistic_run}/checkpoints/best.ckpt", "evaluate.miss_rate=0.3"], out, data_dir))
    cap = json.loads((out / "metrics.json").read_text())["miss_rate_control"]
    images = sorted(data_dir.rglob("*/images/*.png"))[::3]
    return out, cap, images


def test_predictions_csv_says_normal_only_above_the_evaluated_threshold(logistic_run, data_dir, tmp_path, capped):
    ev, cap, images = capped
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "\n".join(map(str, images)) + "\n")
    predict(compose_cfg("predict", [f"ckpt={logistic_run}/checkpoints/best.ckpt", f"input={listing}", f"predict.miss_rate={ev}"],
                        tmp_path / "out", data_dir))
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert len(rows) == len(images)
    referred = 0
    for r in rows:
        if abs(float(r["prob_Normal"]) - cap["threshold"]) <= 1e-6:  # the CSV's 6 decimals cannot tell this side
            normal = r["miss_cap"] == "Normal"  # (the threshold is a calibration image's own score)
        else:
            normal = float(r["prob_Normal"]) > cap["threshold"]
        assert r["miss_cap"] == ("Normal" if normal else "refer")
        disease = {c: float(r[f"prob_{c}"]) for c in ("COVID", "Lung_Opacity", "Viral Pneumonia")}
        assert r["miss_cap_class"] == ("Normal" if normal else max(disease, key=disease.get))
        referred += not normal
    card = json.loads((tmp_path / "out" / "predict.json").read_text())["models"][0]
    assert card["referred_by_miss_cap"] == referred and card["miss_cap"]["threshold"] == cap["threshold"]


def test_an_evaluation_of_another_checkpoint_is_refused_before_any_image(logistic_run, data_dir, tmp_path, capped):
    ev, _, _ = capped
    other = tmp_path / "other_ev"
    other.mkdir()
    metrics = json.loads((ev / "metrics.json").read_text())
    metrics["checkpoint_sha256"] = "0" * 64
    (other / "metrics.json").write_text(json.dumps(metrics))
    cfg = compose_cfg("predict", [f"ckpt={logistic_run}/checkpoints/best.ckpt", f"input={tmp_path / 'absent'}",
                                  f"predict.miss_rate={other}"], tmp_path / "out", data_dir)
    with pytest.raises(LungclsError, match="calibrated another checkpoint") as err:
        predict(cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "out" / "predictions.csv").exists()
    with pytest.raises(LungclsError, match="has no miss-rate cap"):
        predict(compose_cfg("predict", [f"ckpt={logistic_run}/checkpoints/best.ckpt", f"input={tmp_path}",
                                        f"predict.miss_rate={logistic_run}"], tmp_path / "out2", data_dir))


def _post(port: int, path: Path) -> dict:
    import http.client

    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n\r\n'.encode()
            + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/api/predict?cam=false", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return json.loads(conn.getresponse().read())


@pytest.mark.slow
def test_served_api_and_page_show_normal_or_refer_with_the_cap(logistic_run, tmp_path, capped):
    ev, cap, images = capped
    cmd = [sys.executable, "-m", "lungcls.serve", f"ckpt={logistic_run}/checkpoints/best.ckpt", "serve.port=0",
           f"serve.miss_rate={ev}", "serve.cam=false", f"hydra.run.dir={tmp_path}/served"]
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = None, time.monotonic() + 120
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            url = line.split()[1].rstrip("/") if line.startswith("page: ") else None
        assert url is not None
        port = int(url.rsplit(":", 1)[1])
        for _ in range(100):
            try:
                (name, got), = _post(port, images[0])["results"][0]["models"].items()
                break
            except OSError:
                time.sleep(0.1)
        normal = got["probabilities"]["Normal"] > cap["threshold"]
        assert got["miss_cap"]["decision"] == ("Normal" if normal else "refer") and got["miss_cap"]["alpha"] == 0.3
        if CHROMIUM is None:
            return
        playwright = pytest.importorskip("playwright.sync_api")
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url + "/", timeout=30_000)
            page.wait_for_selector(".model-chip", timeout=30_000)
            page.set_input_files("#files", [str(images[0])])
            page.wait_for_selector(".image-card.done", timeout=60_000)
            shown = page.locator(".miss-cap").inner_text()
            browser.close()
        assert ("Refer" if not normal else "Normal under the miss-rate cap 0.3") in shown
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
