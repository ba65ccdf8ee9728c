"""lungcls-serve end to end: the real CLI on 127.0.0.1, the API (same probabilities as the
evaluation loop for the same file, DICOM included), its safety limits, a bounded load test, and the
page in a real headless Chromium (skipped where none is installed)."""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, write_dicom
from PIL import Image

from lungcls.inference.checkpoints import load_classifier
from lungcls.inference.prediction import predict_files

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "") if p and Path(p).is_file()), None)


@pytest.fixture(scope="module")
def server(tmp_path_factory, logistic_run):
    """A tiny logistic model served by `python -m lungcls.serve` on a free loopback port, with
    small limits and its own temporary folder (to check that uploads do not stay on disk)."""
    base = tmp_path_factory.mktemp("serve")
    run = logistic_run
    spool = base / "tmp"
    spool.mkdir()
    env = dict(os.environ, TMPDIR=str(spool), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "lungcls.serve", f"ckpt={run}/checkpoints/best.ckpt", "serve.port=0", "serve.max_upload_mb=3",
           "serve.max_pixels=3000000", "serve.max_request_pixels=4000000", "serve.max_pixels_in_flight=7000000", "serve.max_files=4",
           f"hydra.run.dir={base}/served"]
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, lines, deadline = None, [], time.monotonic() + 120
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("page: "):
            url = line.split()[1].rstrip("/")
    assert url is not None, "".join(lines)
    host, port = url.split("//")[1].split(":")
    _wait_healthy(host, int(port))
    yield {"url": url, "host": host, "port": int(port), "run": run, "spool": spool, "proc": proc}
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _wait_healthy(host: str, port: int) -> None:
    for _ in range(100):
        try:
            if request(host, port, "GET", "/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("server never became healthy")


def request(host, port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def upload(server, files: list[tuple[str, bytes]], query: str = ""):
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode() + data + b"\r\n"
        for name, data in files
    ) + f"--{boundary}--\r\n".encode()
    status, data = request(server["host"], server["port"], "POST", "/api/predict" + query, body,
                           {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return status, json.loads(data)


@pytest.fixture(scope="module")
def xrays(server, tmp_path_factory, data_dir):
    """A phantom PNG and the same picture as a 12-bit MONOCHROME1 DICOM."""
    folder = tmp_path_factory.mktemp("xrays")
    png = next(iter(sorted(data_dir.rglob("COVID/images/*.png"))))
    shutil.copy(png, folder / "covid.png")
    arr = np.asarray(Image.open(png).convert("L"), dtype=np.uint16) * 16 + 8
    write_dicom(folder / "covid.dcm", 4095 - arr, photometric="MONOCHROME1", bits_stored=12)
    return folder / "covid.png", folder / "covid.dcm"


def test_served_probabilities_equal_the_evaluation_loop_for_png_and_dicom(server, xrays):
    png, dcm = xrays
    status, body = upload(server, [("covid.png", png.read_bytes()), ("scan.dcm", dcm.read_bytes())])
    assert status == 200, body
    model = load_classifier(str(server["run"] / "checkpoints" / "best.ckpt"))
    expected = predict_files(model, [str(png), str(dcm)])
    for result, probs in zip(body["results"], expected.probs):
        (name, got), = result["models"].items()
        assert name.startswith("logistic/full")
        served = np.array([got["probabilities"][c] for c in model.class_names])
        assert np.abs(served - probs).max() < 1e-6
        assert got["prediction"] == model.class_names[int(probs.argmax())]
        overlay = Image.open(io.BytesIO(base64.b64decode(got["overlay_png_base64"])))
        assert overlay.format == "PNG" and overlay.size == Image.open(png).size
    assert [r["file"] for r in body["results"]] == ["covid.png", "scan.dcm"]
    status, body = upload(server, [("covid.png", png.read_bytes())], "?cam=false")
    assert status == 200 and "overlay_png_base64" not in body["results"][0]["models"][name]


def test_models_health_and_openapi(server):
    status, data = request(server["host"], server["port"], "GET", "/api/models")
    card = json.loads(data)["models"][0]
    assert status == 200 and card["backbone"] == "logistic" and card["test_metrics"]["images"] > 0
    assert card["training_data"]["dataset"] == "demo" and sum(card["training_data"]["train_images_per_class"].values()) > 0
    status, data = request(server["host"], server["port"], "GET", "/healthz")
    health = json.loads(data)
    assert status == 200 and health["status"] == "ok" and health["rss_mb"] > 0
    spec = json.loads(request(server["host"], server["port"], "GET", "/openapi.json")[1])
    assert "multipart/form-data" in spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"/api/models", "/healthz"} <= set(spec["paths"])


def test_limits_refuse_big_bodies_non_images_pixel_bombs_and_leave_no_upload_on_disk(server, tmp_path):
    # a body declared larger than the limit is refused from its headers, before any of it is sent
    conn = http.client.HTTPConnection(server["host"], server["port"], timeout=60)
    try:
        conn.putrequest("POST", "/api/predict")
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(3 * 2**20 + 10))
        conn.endheaders()
        reply = conn.getresponse()
        status, body = reply.status, json.loads(reply.read())
    finally:
        conn.close()
    assert status == 413 and "serve.max_upload_mb" in body["error"]
    status, body = upload(server, [("notes.txt", b"hello, not an image")])
    assert status == 400 and body["error"] == "notes.txt is not an image lungcls can read; send a PNG, JPEG or DICOM X-ray"
    bomb = io.BytesIO()
    Image.new("L", (2000, 2000)).save(bomb, format="PNG")  # 4 megapixels in a few kB
    status, body = upload(server, [("bomb.png", bomb.getvalue())])
    assert status == 400 and "more than serve.max_pixels=3,000,000" in body["error"] and "\n" not in body["error"]
    status, body = upload(server, [("../../etc/passwd", b"x")])
    assert status == 400 and body["error"].startswith("passwd ")  # the name is echoed, never used as a path
    status, body = upload(server, [(f"x{i}.png", b"x") for i in range(5)])
    assert status == 400 and body["error"] == "5 files in one request, more than 4; send them in several requests"
    status, data = request(server["host"], server["port"], "POST", "/api/predict", b"", {"Content-Type": "multipart/form-data; boundary=x"})
    assert status == 400 and "no file sent" in json.loads(data)["error"]
    # a 2 MB upload is spooled to disk by the multipart parser: only inside the server's own temporary folder
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1400, 1400), dtype=np.uint8)).save(noise, format="PNG")
    assert noise.tell() > 1.5 * 2**20
    status, body = upload(server, [("noise.png", noise.getvalue())], "?cam=false")
    assert status == 200, body
    spooled = [p for p in server["spool"].rglob("*") if p.is_file()]
    assert spooled == []
    assert [p.name for p in server["spool"].iterdir()][0].startswith("lungcls-serve-")


def _image_bytes(fmt: str, side: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (side, side), 90).save(out, format=fmt)
    return out.getvalue()


def test_only_png_jpeg_dicom_of_a_useful_size_within_the_request_budget_are_scored(server, xrays):
    png, dcm = xrays
    for fmt in ("GIF", "BMP", "TIFF", "WEBP"):
        status, body = upload(server, [(f"x.{fmt.lower()}", _image_bytes(fmt, 64))])
        assert status == 400 and body["error"] == f"x.{fmt.lower()} is a {fmt} image; lungcls-serve scores PNG, JPEG and DICOM X-rays: convert it to PNG"
    for fmt in ("PNG", "JPEG"):
        assert upload(server, [(f"x.{fmt.lower()}", _image_bytes(fmt, 64))], "?cam=false")[0] == 200
    status, body = upload(server, [("icon.png", _image_bytes("PNG", 1))])
    assert status == 400 and body["error"].startswith("icon.png is 1x1 pixels, smaller than serve.min_side=32")
    # 3 of 4 megapixels, then 3 more: the second is refused from its header, before it is decoded
    big = _image_bytes("PNG", 1732)
    status, body = upload(server, [("a.png", big), ("b.png", big)])
    assert status == 400 and "more than serve.max_request_pixels=4,000,000 pixels together (b.png has 2,999,824)" in body["error"]
    cut = dcm.read_bytes()
    status, body = upload(server, [("scan.dcm", cut[:cut.index(b"\xe0\x7f\x10\x00") + 3])])
    assert status == 400 and "\n" not in body["error"]


def test_concurrent_large_uploads_take_turns_within_the_pixels_in_flight(server):
    """Six concurrent 3-megapixel uploads against serve.max_pixels_in_flight=7,000,000: at most two
    are decoded and held at once, the others wait their turn, and every one is answered."""
    from concurrent.futures import ThreadPoolExecutor

    big = _image_bytes("PNG", 1732)  # 2,999,824 pixels
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: upload(server, [(f"big{i}.png", big)], "?cam=false"), range(6)))
    assert [status for status, _ in answers] == [200] * 6
    status, health = request(server["host"], server["port"], "GET", "/healthz")
    health = json.loads(health)
    assert 2_999_824 <= health["peak_pixels_in_flight"] <= 7_000_000 and health["pixels_in_flight"] == 0


def test_bounded_load_test_has_no_errors_and_reports_latency_and_memory(server, xrays, capsys):
    from lungcls.serve.loadtest import main

    png, dcm = xrays
    code = main(["--url", server["url"], "--file", str(png), "--file", str(dcm), "-n", "200", "-c", "8", "--limit", "240"])
    out = capsys.readouterr().out
    print(out)  # the numbers, in the test log
    assert code == 0, out
    assert "200 ok, 0 errors" in out and "p50" in out and "p95" in out and "server memory" in out
    mean_batch = float(out.split("mean batch ")[1].split()[0])
    assert mean_batch > 1.0  # concurrent requests were batched onto the model
    # then 100 requests of the largest image the server accepts (1732 px: serve.max_pixels=3000000)
    burst = next(line for line in out.splitlines() if line.startswith("burst of 100 requests of a blank 1732x1732 PNG: 100 ok"))
    before, after = (float(burst.split(" MB before")[0].split()[-1]), float(burst.split(" MB after")[0].split()[-1]))
    assert after < before + 64, burst  # 100 x 3 MB decoded: memory is handed back, not kept


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")
def test_the_page_in_a_real_browser(server, xrays, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    png, dcm = xrays
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(accept_downloads=True)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server["url"] + "/", timeout=30_000)
            page.wait_for_selector(".model-chip", timeout=30_000)
            page.set_input_files("#files", [str(png), str(dcm)])
            page.wait_for_selector(".image-card.done >> nth=1", timeout=60_000)
            cards = page.locator(".image-card.done")
            assert cards.count() == 2
            status, api = upload(server, [("covid.png", png.read_bytes())])
            (name, expected), = api["results"][0]["models"].items()
            card = page.locator(".image-card.done", has_text="covid.png")
            for cls, prob in expected["probabilities"].items():
                assert card.get_by_role("listitem", name=f"{cls} {100 * prob:.1f}%").count() == 1
            assert card.locator(".prediction strong").inner_text() == expected["prediction"]
            overlay = card.locator("img.overlay")
            assert overlay.evaluate("img => img.complete && img.naturalWidth") > 0
            with page.expect_download() as download:
                page.click("#csv")
            rows = list(csv.DictReader(open(download.value.path())))
            assert {r["file"] for r in rows} == {"covid.png", "covid.dcm"} and all(r["model"] == name for r in rows)
            with page.expect_download() as download:
                page.click("#zip")
            names = zipfile.ZipFile(download.value.path()).namelist()
            assert len(names) == 2 and all(n.endswith(".png") for n in names)
            page.click(".card-button")
            assert "logistic" in page.locator("#card").inner_text() and page.locator("#card").is_visible()
            assert errors == []
        finally:
            browser.close()
