"""Probes: mistakes and damaged files a user meets, each run as the user runs the command, each
ending in one line (``lungcls: error: ...``, exit 2) or a result, and never losing a result.

A table of cases, as MONAI's tests are: ``CASES`` holds (id, command, arguments, expected exit
status, text the one-line error must hold, files that must be left byte for byte). Arguments name
fixtures in braces (``{run}`` a finished training run, ``{tmp}`` this test's folder, ``{dcm}`` a
DICOM...). The next reliability pass adds a row. Commands run in-process (``main()`` with the
command line in ``sys.argv``), which is what the console script does, without an interpreter start.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_class_tree, write_dicom

# Every Hydra command: a folder that holds a run is refused before anything is written into it.
COMMANDS = {"train": "lungcls.train", "evaluate": "lungcls.evaluate", "report": "lungcls.report.__main__",
            "predict": "lungcls.predict", "export": "lungcls.export", "audit": "lungcls.audit.__main__"}
SMALL = [*TINY, "backbone=logistic", "paths.data_dir={data}"]  # quick even where the probe is not refused
OTHER_DATA = [a for a in SMALL if not a.startswith("dataset.demo.")]
MODEL_ARG = {"train": SMALL, "evaluate": ["ckpt_path={ckpt}"], "report": ["ckpt={ckpt}", "report.per_class=1", "report.sanity=false"],
             "predict": ["ckpt={ckpt}", "input={png}"], "export": ["ckpt={ckpt}"],
             "audit": [*[a for a in TINY if a.startswith("dataset.")], "paths.data_dir={data}"]}
FOLDER = ["dataset=folder", "dataset.root={tree}", "dataset.classes=[COVID,Normal]", "dataset.image_size=32"]
RUN_FILES = ["metrics.json", "predictions.csv", "checkpoints/best.ckpt", "splits.csv"]

CASES = [
    *[(f"{name}-into-a-finished-run", module, [*MODEL_ARG[name], "hydra.run.dir={run}"], 2,
       "already holds a complete run", RUN_FILES) for name, module in COMMANDS.items()],
    ("multirun-into-a-finished-sweep", "lungcls.train", ["-m", *SMALL, "seed=1", "hydra.sweep.dir={sweep}"], 2,
     "hydra.sweep.dir={sweep} already holds a run", ["{sweep}/0/metrics.json"]),
    ("export-over-its-checkpoint", "lungcls.export", ["ckpt={ckpt}", "export.out={ckpt}", "hydra.run.dir={tmp}/e"], 2,
     "is one of the export's inputs", ["checkpoints/best.ckpt"]),
    ("export-over-an-existing-file", "lungcls.export", ["ckpt={ckpt}", "export.out={run}/metrics.json", "hydra.run.dir={tmp}/e"], 2,
     "exists; give a new file name, or export.overwrite=true", ["metrics.json"]),
    ("export-over-a-sample-image", "lungcls.export", ["ckpt={ckpt}", "export.samples={png}", "export.out={png}",
                                                      "export.overwrite=true", "hydra.run.dir={tmp}/e"], 2, "one of the export's inputs", ["{png}"]),
    ("predict-a-damaged-dicom", "lungcls.predict", ["ckpt={ckpt}", "input={bad_dcm}", "hydra.run.dir={tmp}/p"], 2,
     "cannot read DICOM", ["{bad_dcm}"]),
    ("train-on-a-damaged-dicom", "lungcls.train", [*OTHER_DATA, *FOLDER, "hydra.run.dir={tmp}/t"], 2, "cannot read DICOM", []),
    ("audit-lists-a-damaged-dicom", "lungcls.audit.__main__", [*FOLDER, "hydra.run.dir={tmp}/a"], 0, None, []),
    ("train-on-a-latin1-manifest", "lungcls.train", [*OTHER_DATA, "dataset=manifest", "dataset.manifest={latin1_labelled}",
                                                     "hydra.run.dir={tmp}/t"], 2, "is not UTF-8 text", []),
    ("predict-a-truncated-dicom", "lungcls.predict", ["ckpt={ckpt}", "input={cut_dcm}", "hydra.run.dir={tmp}/p"], 2,
     "is truncated or damaged", []),
    ("predict-skips-a-damaged-dicom", "lungcls.predict", ["ckpt={ckpt}", "input={mixed}", "predict.skip_unreadable=true",
                                                          "hydra.run.dir={tmp}/p"], 0, None, []),
    ("predict-a-latin1-manifest", "lungcls.predict", ["ckpt={ckpt}", "input={latin1}", "hydra.run.dir={tmp}/p"], 2,
     "is not UTF-8 text", []),
    ("predict-a-utf8-bom-manifest", "lungcls.predict", ["ckpt={ckpt}", "input={bom}", "hydra.run.dir={tmp}/p"], 0, None, []),
    ("audit-a-latin1-manifest", "lungcls.audit.__main__", ["dataset=manifest", "dataset.manifest={latin1_labelled}",
                                                           "hydra.run.dir={tmp}/a"], 2, "is not UTF-8 text", []),
    ("predict-an-oversized-image", "lungcls.predict", ["ckpt={ckpt}", "input={huge}", "hydra.run.dir={tmp}/p"], 2,
     "pixels lungcls decodes; downscale it", []),
    ("predict-with-the-checkpoints-folder", "lungcls.predict", ["ckpt={run}/checkpoints", "input={png}", "hydra.run.dir={tmp}/p"], 2,
     "is a folder, not a checkpoint file", []),
    ("multirun-with-a-failing-job", "lungcls.train", ["-m", "dataset.batch_size=0", "logger=csv", "hydra.sweep.dir={tmp}/m"], 1,
     "1 job(s) of the multirun failed", []),
]


def huge_png(path: Path, side: int = 10_001) -> Path:
    """A valid PNG whose header says side x side pixels (a decompression bomb in a few bytes)."""
    body = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", body) + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1))) + chunk(b"IEND", b""))
    return path


def damaged_dicom(path: Path, source: Path) -> Path:
    """The issue's file: a DICOM with 4 header bytes changed (the transfer syntax's length and VR)."""
    data = bytearray(source.read_bytes())
    at = data.index(b"\x02\x00\x10\x00")  # (0002,0010) Transfer Syntax UID
    data[at + 4:at + 8] = b"\x55\x00\x55\x8d"
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory, logistic_run, data_dir):
    """A copy of a finished run (a probe that fails may damage it), a finished sweep, and the files."""
    base = tmp_path_factory.mktemp("probes")
    run = base / "run"
    shutil.copytree(logistic_run, run)
    (run / "status.json").write_text(json.dumps({"state": "complete"}))
    sweep = base / "sweep"
    shutil.copytree(run, sweep / "0")
    png = shutil.copy(next(iter(sorted(data_dir.rglob("COVID/images/*.png")))), base / "xray.png")
    dcm = write_dicom(base / "good.dcm", np.tile(np.arange(64, dtype=np.uint16) * 60, (64, 1)), bits_stored=12)
    cut, data = base / "cut.dcm", dcm.read_bytes()
    cut.write_bytes(data[: data.index(b"\xe0\x7f\x10\x00") + 3])  # cut inside the Pixel Data element's tag
    mixed = base / "mixed"
    mixed.mkdir()
    shutil.copy(png, mixed / "ok.png")
    damaged_dicom(mixed / "bad.dcm", dcm)
    tree = make_class_tree(base / "tree", {"COVID": 6, "Normal": 6}, images_folder=False)
    damaged_dicom(tree / "Normal" / "bad.dcm", dcm)
    latin1, bom, labelled = base / "latin1.csv", base / "bom.csv", base / "labelled.csv"
    latin1.write_bytes(f"path\n{png}\n{base / 'Neumonía.png'}\n".encode("latin-1"))
    bom.write_bytes(f"path\n{png}\n".encode("utf-8-sig"))
    labelled.write_bytes(f"path,label\n{png},Normal\n{png},Neumonía\n".encode("latin-1"))
    return {"data": data_dir, "run": run, "ckpt": run / "checkpoints" / "best.ckpt", "sweep": sweep, "png": png, "dcm": dcm,
            "bad_dcm": damaged_dicom(base / "bad.dcm", dcm), "cut_dcm": cut, "mixed": mixed, "latin1": latin1, "bom": bom,
            "latin1_labelled": labelled, "tree": tree, "huge": huge_png(base / "huge.png")}


def run_command(module: str, args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """``main()`` of a command with ``args`` as its command line: (exit status, stdout, stderr)."""
    main = importlib.import_module(module).main
    monkeypatch.setattr(sys, "argv", [module, *args])
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # Hydra adds a file handler in the run folder
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
    out = capsys.readouterr()
    return code, out.out, out.err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case_id,module,args,status,message,kept", CASES, ids=[c[0] for c in CASES])
def test_probe(case_id, module, args, status, message, kept, probe_files, tmp_path, monkeypatch, capsys):
    names = {k: str(v) for k, v in probe_files.items()} | {"tmp": str(tmp_path)}
    args = [a.format(**names) for a in args]
    kept = [Path(k.format(**names)) if "{" in k else probe_files["run"] / k for k in kept]
    before = {k: digest(k) for k in kept}
    code, out, err = run_command(module, args, monkeypatch, capsys)
    assert code == status, f"{case_id}: exit {code}\n{out[-2000:]}\n{err[-2000:]}"
    if message is not None:
        errors = [line for line in err.splitlines() if line.startswith("lungcls: error: ")]
        assert len(errors) == 1 and message.format(**names) in errors[0], err[-2000:]
        assert "Traceback" not in err
    assert {k: digest(k) for k in kept} == before, f"{case_id} changed a file it must leave alone"


def test_skipped_damaged_dicom_is_listed_with_its_error(probe_files, tmp_path, monkeypatch, capsys):
    """With predict.skip_unreadable the damaged DICOM is a row with its one-line error, the PNG is scored."""
    args = [f"ckpt={probe_files['ckpt']}", f"input={probe_files['mixed']}", "predict.skip_unreadable=true", f"hydra.run.dir={tmp_path}/p"]
    assert run_command("lungcls.predict", args, monkeypatch, capsys)[0] == 0
    rows = {Path(r.split(",")[0]).name: r for r in (tmp_path / "p" / "predictions.csv").read_text().splitlines()[1:]}
    assert "cannot read DICOM" in rows["bad.dcm"] and "cannot read" not in rows["ok.png"]


def test_export_overwrite_replaces_an_earlier_export(probe_files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model.pt"
    out.write_bytes(b"an earlier export")
    args = [f"ckpt={probe_files['ckpt']}", f"export.out={out}", "export.overwrite=true", f"hydra.run.dir={tmp_path}/e"]
    assert run_command("lungcls.export", args, monkeypatch, capsys)[0] == 0
    assert out.read_bytes() != b"an earlier export" and out.stat().st_size > 1000
