"""``lungcls-bench --scale N1,N2,...``: how each stage's time and peak memory grow with the number
of images. For each size a phantom set in the database's format is generated (once, then reused;
``--scale-image-size`` pixels), and every stage of ``lungcls.benchmark.stages`` runs in its own
process: wall time of its work and that process's peak RSS. ``scale.json`` holds, per stage,
``images``, ``seconds``, ``peak_rss_mb`` and ``exponent`` (the least-squares slope of log seconds
on log images: 1 is linear, 2 quadratic); ``scale.png`` plots them on log-log axes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.benchmark.data import ensure_bench_dataset
from lungcls.benchmark.stages import STAGES
from lungcls.errors import LungclsError


def parse_scale(text: str) -> list[int]:
    """``1000,4000,16000`` -> [1000, 4000, 16000]; increasing positive integers, at least two."""
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if len(sizes) < 2 or any(n < 4 for n in sizes) or any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise LungclsError(f"--scale {text}: give two or more increasing whole numbers of images, each at least 4 "
                           "(the four classes), e.g. --scale 1000,4000,16000")
    return sizes


def exponent(images: list[int], seconds: list[float]) -> float | None:
    """Least-squares slope of log(seconds) on log(images)."""
    pts = [(np.log(n), np.log(s)) for n, s in zip(images, seconds) if s and s > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


# A stage of a few seconds is timed this many times and the fastest kept (timeit's rule: the minimum
# is the run least disturbed by other work on the machine). Peak RSS is the first run's at every
# size: the largest of several runs at the small sizes only would flatter how memory grows.
SHORT_STAGE_SECONDS = 10.0
SHORT_REPEATS = 3


def run_child(stage: str, args: dict[str, Any], log: Path) -> tuple[float, float]:
    """(seconds of the stage's work, peak RSS in MB of its process); its stderr goes to ``log``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lungcls.benchmark.stages", stage, json.dumps(args)],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (peak RSS)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = " ".join(log.read_text().strip().splitlines()[-1:])[:300]
        raise RuntimeError(f"stage {stage} failed (exit {code}): {tail}; see {log}")
    seconds = json.loads(out.strip().splitlines()[-1])["seconds"]
    return seconds, usage.ru_maxrss / 1024  # kilobytes on Linux


MAX_EXPONENT = 1.1  # the targets: no stage's time grows faster than this power of the images


def _result(stages: dict[str, dict[str, list]], image_size: int, sizes: list[int], cache: str = "mmap") -> dict[str, Any]:
    for row in stages.values():
        e = exponent(row["images"], row["seconds"])
        row["exponent"] = None if e is None else round(e, 3)
    result = {"stages": stages, "image_size": image_size, "sizes": sizes, "epoch_cache": cache,
              "decoded_mb": [round(n * image_size * image_size / 2**20, 1) for n in sizes]}
    result["targets"] = targets(result)
    return result


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The ladder's verdicts: every stage's exponent at most ``MAX_EXPONENT``, and the training
    epochs' peak RSS growing by less than the decoded set from the smallest size to the largest
    (the memory-mapped cache must not be held per process)."""
    out: dict[str, Any] = {}
    slow = {name: row["exponent"] for name, row in result["stages"].items()
            if row["exponent"] is not None and row["exponent"] > MAX_EXPONENT}
    out["exponents"] = {"max": MAX_EXPONENT, "met": not slow, "above": slow}
    decoded = result["decoded_mb"][-1] - result["decoded_mb"][0]
    for name, row in result["stages"].items():
        if name.startswith("epoch_") and len(row["peak_rss_mb"]) > 1:
            grew = round(row["peak_rss_mb"][-1] - row["peak_rss_mb"][0], 1)
            out[f"{name}_rss"] = {"grew_mb": grew, "decoded_grew_mb": round(decoded, 1), "cache": result["epoch_cache"],
                                  "met": grew < decoded}
    return out


def format_targets(result: dict[str, Any]) -> str:
    """One line per target, met or not."""
    t, sizes = result["targets"], result["sizes"]
    lines = []
    e = t["exponents"]
    lines.append(f"{'met' if e['met'] else 'NOT MET'}: every stage's exponent <= {e['max']}"
                 + ("" if e["met"] else " (" + ", ".join(f"{k} {v}" for k, v in e["above"].items()) + ")"))
    for name, v in t.items():
        if name.endswith("_rss"):
            lines.append(f"{'met' if v['met'] else 'NOT MET'}: {name[:-4]} peak RSS ({v['cache']} cache) grew by {v['grew_mb']:.0f} MB "
                         f"from {sizes[0]:,} to {sizes[-1]:,} images; the decoded set by {v['decoded_grew_mb']:.0f} MB (target: less)")
    return "\n".join(lines)


def ladder(sizes: list[int], image_size: int, gen_dir: str, out: Path, cache: str = "mmap") -> dict[str, Any]:
    """Every stage at every size; what scale.json holds (written after each size, so a ladder
    stopped early keeps the sizes it finished)."""
    stages: dict[str, dict[str, list]] = {s: {"images": [], "seconds": [], "peak_rss_mb": []} for s in STAGES}
    for n in sizes:
        root = ensure_bench_dataset(Path(gen_dir) / f"bench-{n}x{image_size}", n, image_size)
        work = out / f"work-{n}"
        work.mkdir(parents=True, exist_ok=True)
        args = {"root": str(root), "image_size": image_size, "out": str(work), "cache": cache}
        for stage in STAGES:
            seconds, rss = run_child(stage, args, work / f"{stage}.log")
            for _ in range(SHORT_REPEATS - 1 if seconds < SHORT_STAGE_SECONDS else 0):
                again, _ = run_child(stage, args, work / f"{stage}.log")
                seconds = min(seconds, again)
            print(f"[bench] {n:>8,} images  {stage:<16}{seconds:>9.2f} s {rss:>9.0f} MB", flush=True)
            for key, value in (("images", n), ("seconds", round(seconds, 3)), ("peak_rss_mb", round(rss, 1))):
                stages[stage][key].append(value)
        done = _result(stages, image_size, sizes[: sizes.index(n) + 1], cache)
        tmp = out / "scale.json.tmp"
        tmp.write_text(json.dumps(done, indent=2) + "\n")
        os.replace(tmp, out / "scale.json")
    return done


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, row in result["stages"].items():
        ax.plot(row["images"], row["seconds"], marker="o", label=f"{name} (exponent {row['exponent']})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("images")
    ax.set_ylabel("seconds")
    ax.set_title(f"lungcls stages against data set size ({result['image_size']} px)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(result: dict[str, Any]) -> str:
    sizes = result["sizes"]
    head = f"{'stage':<16}" + "".join(f"{n:>12,}" for n in sizes) + f"{'exponent':>10}{'peak MB':>10}"
    lines = [f"seconds per stage ({result['image_size']} px images)", head]
    for name, row in result["stages"].items():
        cells = "".join(f"{s:>12.2f}" for s in row["seconds"])
        lines.append(f"{name:<16}{cells}{row['exponent'] if row['exponent'] is not None else '-':>10}{max(row['peak_rss_mb']):>10.0f}")
    return "\n".join(lines)


def text_plot(result: dict[str, Any], width: int = 60, rows_per_decade: int = 6) -> str:
    """The log-log plot as text (a terminal, a log, the README): one letter per stage at each
    size (``*`` where stages meet), seconds up, images across, both on log axes; the dotted line
    has slope 1 (time linear in the images)."""
    stages = {name: row for name, row in result["stages"].items() if row["seconds"]}
    points = [(n, t) for row in stages.values() for n, t in zip(row["images"], row["seconds"]) if n > 0 and t > 0]
    if not points:
        return ""
    lx = [math.log10(n) for n, _ in points]
    ly = [math.log10(t) for _, t in points]
    x0, x1 = min(lx), max(lx) if max(lx) > min(lx) else min(lx) + 1
    y0, y1 = math.floor(min(ly)), math.ceil(max(ly)) if math.ceil(max(ly)) > math.floor(min(ly)) else math.floor(min(ly)) + 1
    height = (y1 - y0) * rows_per_decade + 1
    grid = [[" "] * width for _ in range(height)]

    def cell(x: float, y: float) -> tuple[int, int]:
        return (round((x - x0) / (x1 - x0) * (width - 1)), height - 1 - round((y - y0) / (y1 - y0) * (height - 1)))

    for k in range(width):  # slope 1 through the bottom-left corner
        x = x0 + (x1 - x0) * k / (width - 1)
        c, r = cell(x, y0 + (x - x0))
        if 0 <= r < height:
            grid[r][c] = "."
    letters = {}
    for i, (name, row) in enumerate(stages.items()):
        letters[name] = chr(ord("A") + i)
        for n, t in zip(row["images"], row["seconds"]):
            if n > 0 and t > 0:
                c, r = cell(math.log10(n), math.log10(t))
                grid[r][c] = letters[name] if grid[r][c] in " ." else "*"
    lines = []
    for r, cells in enumerate(grid):
        decade, rest = divmod(height - 1 - r, rows_per_decade)
        label = "" if rest else f"{10.0 ** (y0 + decade):g} s"
        lines.append(f"{label:>9} |{''.join(cells)}")
    sizes = sorted({n for n, _ in points})
    axis = [" "] * width
    for n in sizes:
        text = f"{n:,}"
        c, _ = cell(math.log10(n), y0)
        start = min(max(0, c - len(text) // 2), width - len(text))
        axis[start : start + len(text)] = list(text)
    lines.append(" " * 10 + "+" + "-" * width)
    lines.append(" " * 11 + "".join(axis) + "  images")
    lines.append(" " * 11 + "; ".join(f"{letters[name]} {name} ({row['exponent']})" for name, row in stages.items()))
    lines.append(" " * 11 + ". slope 1 (time linear in the images)")
    return "\n".join(lines)


def run_scale(sizes: list[int], image_size: int, gen_dir: str, out: str, cache: str = "mmap") -> Path:
    """Run the ladder, write scale.json and scale.png into ``out``, print the table."""
    out_dir = Path(out)
    if out_dir.exists() and (out_dir / "scale.json").exists():
        raise LungclsError(f"{out_dir}/scale.json exists; give another --out (a finished run is never written over)")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ladder(sizes, image_size, gen_dir, out_dir, cache)
    path = out_dir / "scale.json"
    plot(result, out_dir / "scale.png")
    print(format_table(result))
    print("\n" + text_plot(result))
    print("\n" + format_targets(result))
    print(f"\nwritten: {path} and {out_dir / 'scale.png'}")
    return path
