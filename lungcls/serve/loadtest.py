"""``lungcls-loadtest``: a bounded load test of a running ``lungcls-serve`` on this machine.

Sends ``--requests`` uploads (default 200), ``--concurrency`` at a time (default 8), each a
multipart ``POST /api/predict`` of one of the given X-rays, then prints the errors, p50/p95/max
latency, throughput, the server's mean batch size and its memory (from ``/healthz``); then a burst
of ``--burst`` requests (default 100) of the largest blank image the server accepts, with the
server's memory before and after it (it must return to its level). Only
loopback addresses are accepted, every request has a timeout and the whole run a time limit.
Exit status 1 when any request failed.

    lungcls-loadtest --file xray.png
    lungcls-loadtest --url http://127.0.0.1:8080 --file a.png --file b.dcm -n 200 -c 8 --no-cam
"""

from __future__ import annotations

import argparse
import http.client
import io
import ipaddress
import json
import math
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np


def loopback(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "http":
        raise SystemExit(f"lungcls-loadtest: error: {url} is not an http:// URL")
    try:
        is_loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise SystemExit(f"lungcls-loadtest: error: {host} is not a loopback address; load tests target this machine only")
    return host, parts.port or 80


def multipart(path: Path) -> tuple[bytes, str]:
    return multipart_bytes(path.name, path.read_bytes())


def multipart_bytes(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def get_json(host: str, port: int, path: str, timeout: float) -> dict[str, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


class Client:
    """One keep-alive connection per worker thread."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.local = threading.local()
        self.opened: list[http.client.HTTPConnection] = []

    def close(self) -> None:
        """Close every keep-alive connection, so the server is not left holding them."""
        for conn in self.opened:
            conn.close()

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, float, str]:
        start = time.perf_counter()
        for attempt in (0, 1):  # one reconnect when the server closed an idle keep-alive connection
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self.opened.append(conn)
            self.local.conn = conn
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": content_type})
                response = conn.getresponse()
                data = response.read()
                ok = response.status == 200 and b'"results"' in data
                return response.status, time.perf_counter() - start, "" if ok else data[:200].decode(errors="replace")
            except (http.client.HTTPException, ConnectionError, socket.timeout, OSError) as e:
                conn.close()
                self.local.conn = None
                if attempt:
                    return 0, time.perf_counter() - start, f"{type(e).__name__}: {e}"
        return 0, 0.0, "unreachable"


def run(url: str, files: list[Path], requests: int, concurrency: int, cam: bool, timeout: float, limit_s: float) -> dict[str, Any]:
    host, port = loopback(url)
    bodies = [multipart(f) for f in files]
    before = get_json(host, port, "/healthz", timeout)
    client = Client(host, port, timeout)
    path = f"/api/predict?cam={'true' if cam else 'false'}"
    deadline = time.monotonic() + limit_s
    results: list[tuple[int, float, str]] = []

    def one(i: int) -> tuple[int, float, str]:
        if time.monotonic() > deadline:
            return -1, 0.0, "not sent: the run's time limit passed"
        return client.post(path, *bodies[i % len(bodies)])

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(one, range(requests)))
    finally:
        client.close()
    wall = time.perf_counter() - start
    after = get_json(host, port, "/healthz", timeout)
    latencies = np.array([t for s, t, _ in results if s == 200]) * 1000
    errors = [(s, m) for s, _, m in results if s != 200]
    batches = after["batches"] - before["batches"]
    return {
        "requests": requests, "concurrency": concurrency, "cam": cam, "ok": int(len(latencies)), "errors": len(errors),
        "first_error": f"{errors[0][0]} {errors[0][1]}" if errors else None,
        "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
        "p95_ms": float(np.percentile(latencies, 95)) if len(latencies) else None,
        "max_ms": float(latencies.max()) if len(latencies) else None,
        "throughput_rps": len(latencies) / wall if wall > 0 else None,
        "mean_batch_images": (after["images"] - before["images"]) / batches if batches else None,
        "server_rss_mb_before": before["rss_mb"], "server_rss_mb_after": after["rss_mb"], "server_peak_rss_mb": after["peak_rss_mb"],
    }


def blank_png(side: int) -> bytes:
    """A blank grayscale PNG of side x side pixels: a few kB on the wire, side² bytes decoded."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (side, side), 128).save(out, format="PNG")
    return out.getvalue()


def burst(url: str, requests: int, concurrency: int, timeout: float, side: int = 0) -> dict[str, Any]:
    """``requests`` uploads of one blank image as large as the server accepts (``side`` 0: the
    square under its ``max_pixels`` and ``max_request_pixels``, at most 6300 px), with the server's
    resident memory before and after: memory must return to its level after a burst."""
    host, port = loopback(url)
    limits = get_json(host, port, "/api/models", timeout)["limits"]
    largest = math.isqrt(min(int(limits["max_pixels"]), int(limits.get("max_request_pixels", limits["max_pixels"]))))
    side = side or min(largest, 6300)
    body, content_type = multipart_bytes(f"blank-{side}.png", blank_png(side))
    before = get_json(host, port, "/healthz", timeout)
    client = Client(host, port, timeout)
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(lambda _: client.post("/api/predict?cam=false", body, content_type), range(requests)))
    finally:
        client.close()
    time.sleep(1.0)  # the server hands memory back after each response
    after = get_json(host, port, "/healthz", timeout)
    return {"burst_requests": requests, "burst_side": side, "burst_ok": sum(s == 200 for s, _, _ in results),
            "burst_first_error": next((f"{s} {m}" for s, _, m in results if s != 200), None),
            "burst_rss_mb_before": before["rss_mb"], "burst_rss_mb_after": after["rss_mb"], "burst_peak_rss_mb": after["peak_rss_mb"]}


def report_lines(r: dict[str, Any]) -> list[str]:
    def ms(v):
        return "n/a" if v is None else f"{v:.0f} ms"

    lines = [
        f"{r['requests']} requests, {r['concurrency']} at a time (Grad-CAM {'on' if r['cam'] else 'off'}): {r['ok']} ok, {r['errors']} errors",
        f"latency p50 {ms(r['p50_ms'])}, p95 {ms(r['p95_ms'])}, max {ms(r['max_ms'])}; "
        f"throughput {r['throughput_rps'] or 0:.1f} requests/s; mean batch {r['mean_batch_images'] or 0:.1f} images",
        f"server memory: {r['server_rss_mb_before']:.0f} MB before, {r['server_rss_mb_after']:.0f} MB after, peak {r['server_peak_rss_mb']:.0f} MB",
    ]
    if r["first_error"]:
        lines.append(f"first error: {r['first_error']}")
    if r.get("burst_requests"):
        lines.append(f"burst of {r['burst_requests']} requests of a blank {r['burst_side']}x{r['burst_side']} PNG: {r['burst_ok']} ok; "
                     f"server memory {r['burst_rss_mb_before']:.0f} MB before, {r['burst_rss_mb_after']:.0f} MB after, "
                     f"peak {r['burst_peak_rss_mb']:.0f} MB")
        if r["burst_first_error"]:
            lines.append(f"first burst error: {r['burst_first_error']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lungcls-loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running lungcls-serve (loopback only)")
    parser.add_argument("--file", action="append", required=True, type=Path, help="an X-ray to upload (repeat for several)")
    parser.add_argument("-n", "--requests", type=int, default=200)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--no-cam", action="store_true", help="ask for probabilities only (no Grad-CAM overlay)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds for the whole run; later requests are not sent")
    parser.add_argument("--burst", type=int, default=100, help="then this many requests of the largest image the server accepts, "
                        "with its memory before and after (0: none)")
    parser.add_argument("--burst-side", type=int, default=0, help="side of the burst's blank PNG (default: the largest accepted, at most 6300)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.file if not f.is_file()]
    if missing or not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        parser.error(f"no such file: {missing[0]}" if missing else "use 1..100000 requests and a concurrency of 1..256")
    try:
        r = run(args.url, args.file, args.requests, args.concurrency, not args.no_cam, args.timeout, args.limit)
        if args.burst > 0:
            r.update(burst(args.url, args.burst, args.concurrency, args.timeout, args.burst_side))
    except (ConnectionError, OSError) as e:
        print(f"lungcls-loadtest: error: cannot reach {args.url} ({e}); start lungcls-serve first", file=sys.stderr)
        return 2
    for line in report_lines(r):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 1 if r["errors"] or r.get("burst_first_error") else 0


if __name__ == "__main__":
    sys.exit(main())
