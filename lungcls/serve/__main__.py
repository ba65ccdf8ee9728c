"""``lungcls-serve ckpt=[...]``: serve trained checkpoints as a web page and a JSON API (Hydra app;
see conf/serve.yaml). Bound to 127.0.0.1 unless ``serve.host`` says otherwise.

Uploads larger than what fits in memory are spooled by the multipart parser into a temporary
folder of this process, removed when the server stops; nothing else is written.
"""

from __future__ import annotations

import logging
import socket
import sys
import tempfile

from omegaconf import DictConfig

from lungcls.cli import hydra_main
from lungcls.models.device import pick_device
from lungcls.errors import LungclsError, require_extra
from lungcls.explain.maps.explainer import ReportModel
from lungcls.inference.checkpoints import load_checkpoints
from lungcls.inference.prediction import refuse_lung_masked
from lungcls.inference.scoring import UsedModel
from lungcls.serve.settings import ServeSettings
from lungcls.settings import typed
from lungcls.inference.screening import load_screening_thresholds
from lungcls.inference.capload import load_miss_caps

log = logging.getLogger("lungcls.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts (so port 0 gives a known free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LungclsError(f"cannot listen on {host}:{port} ({e.strerror}); choose another serve.port or serve.host") from None
    return sock


def serve(cfg: DictConfig) -> None:
    """Load the checkpoints, then serve until interrupted (Ctrl-C)."""
    require_extra(("fastapi", "uvicorn", "multipart"), "serve")
    import uvicorn

    from lungcls.serve.app import create_app

    s = typed(cfg.serve, ServeSettings, "serve")
    refs = [ReportModel.of(m) for m in load_checkpoints(cfg.ckpt, pick_device(s.device))]
    refuse_lung_masked(refs, "uploads")
    thresholds = load_screening_thresholds(s.screening, [r.checkpoint for r in refs])
    caps = load_miss_caps(s.miss_rate, [r.checkpoint for r in refs], "serve.miss_rate")
    models = [UsedModel(r, thresholds.get(r.checkpoint), s.normal_margin, caps.get(r.checkpoint)) for r in refs]
    sock = bind(s.host, s.port)
    host, port = sock.getsockname()[:2]
    if s.host not in LOOPBACK:
        log.warning("serve.host=%s: the service is reachable from other machines and has no authentication", s.host)
    with tempfile.TemporaryDirectory(prefix="lungcls-serve-") as spool:
        tempfile.tempdir = spool  # where the multipart parser spools large uploads
        app, batcher = create_app(models, s)
        shown = f"[{host}]" if ":" in host else host
        print(f"serving {len(models)} model(s): {', '.join(m.name for m in models)}")
        print(f"page: http://{shown}:{port}/  API: POST /api/predict, GET /api/models, GET /healthz, OpenAPI: /openapi.json", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=10))
        try:
            server.run(sockets=[sock])
        finally:
            batcher.close()
            tempfile.tempdir = None
    print("server stopped", file=sys.stderr)


@hydra_main("serve")
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    main()
