"""``lungcls-bench --scale`` and ``--near-duplicates``: bad input is one line, the growth exponent is
the log-log slope, synthetic hashes follow measured bit statistics (not uniform bits), and (slow) both
commands run end to end: scale.json with every stage, recall 1.0 against all pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungcls.benchmark.__main__ import main
from lungcls.benchmark.neardup import calibrate, draw_codes, pair_quantiles
from lungcls.benchmark.scale import exponent, parse_scale
from lungcls.benchmark.stages import STAGES
from lungcls.errors import LungclsError


@pytest.mark.parametrize("text", ["4000,1000", "1000", "1000,1000", "0,10", "10,abc", "-5,10"])
def test_a_bad_scale_list_is_one_line_naming_the_fix(text, tmp_path, capsys):
    with pytest.raises(LungclsError) as e:
        parse_scale(text)
    assert "increasing" in str(e.value) and "--scale 1000,4000,16000" in str(e.value) and "\n" not in str(e.value)
    assert main([f"--scale={text}", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lungcls-bench: error: --scale")
    assert not (tmp_path / "out").exists()


def test_exponent_is_the_log_log_slope():
    n = [1000, 4000, 16000]
    assert exponent(n, [0.002 * x for x in n]) == pytest.approx(1.0)
    assert exponent(n, [1e-6 * x * x for x in n]) == pytest.approx(2.0)
    assert exponent(n, [5.0, 5.0, 5.0]) == pytest.approx(0.0, abs=1e-9)
    assert exponent([1000], [1.0]) is None


def test_synthetic_hashes_follow_the_templates_bit_statistics():
    rng = np.random.default_rng(0)
    freq = np.clip(rng.beta(0.4, 0.4, 144), 0.01, 0.99)  # skewed, as chest film hashes are
    templates = np.repeat((rng.random((300, 144)) < freq)[:, None, :], 6, axis=1)
    templates[:, 1:] ^= rng.random((300, 5, 144)) < 0.1
    rho, fit = calibrate(templates, rng)
    codes = draw_codes(templates, 20000, rho, rng)
    assert np.abs(codes[:, 0].mean(0) - templates[:, 0].mean(0)).max() < 0.05  # the measured frequencies
    assert fit["same_template_q01_bits"] >= fit["templates_q01_bits"] or rho == 1.0
    median, q01 = pair_quantiles(codes[:, 0], rng)
    assert median < 60  # uniform random bits would sit at 72 of 144
    crop_gap = (codes[:, 0] != codes[:, 3]).sum(1).mean()
    assert crop_gap == pytest.approx((templates[:, 0] != templates[:, 3]).sum(1).mean(), rel=0.25)


@pytest.mark.slow
def test_near_duplicates_bench_has_recall_one(tmp_path):
    out = tmp_path / "nd"
    assert main(["--near-duplicates", "4000", "--recall-subset", "2000", "--gen-dir", str(tmp_path / "data"), "--out", str(out)]) == 0
    result = json.loads((out / "near_duplicates.json").read_text())
    assert result["codes"] == 4000 and result["recall"] == 1.0 and result["recall_pairs"] > 0
    assert result["extra_pairs_in_subset"] == 0 and result["pairs"] >= result["recall_pairs"]
    assert result["faiss"]["codes"] == 4000 and result["faiss"]["same_pairs"] is True  # faiss finds the same pairs
    assert main(["--near-duplicates", "4000", "--gen-dir", str(tmp_path / "data"), "--out", str(out)]) == 2  # never over a result


@pytest.mark.slow
def test_scale_ladder_writes_every_stage(tmp_path):
    out = tmp_path / "scale"
    assert main(["--scale", "8,16", "--scale-image-size", "32", "--scale-cache", "ram", "--gen-dir", str(tmp_path / "data"),
                 "--out", str(out)]) == 0
    result = json.loads((out / "scale.json").read_text())
    assert result["epoch_cache"] == "ram" and result["targets"]["epoch_resnet18_rss"]["cache"] == "ram"
    assert set(result["stages"]) == set(STAGES)
    for row in result["stages"].values():
        assert row["images"] == [8, 16] and len(row["seconds"]) == 2 and all(s > 0 for s in row["seconds"])
        assert all(m > 50 for m in row["peak_rss_mb"]) and isinstance(row["exponent"], float)
    assert (out / "scale.png").stat().st_size > 1000


def test_near_duplicates_drawn_around_a_folder_of_xrays(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "xrays" / "nested"
    folder.mkdir(parents=True)
    for k in range(24):  # smooth random films: distinct hashes
        small = (rng.random((6, 6)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC).save(folder / f"film-{k}.png")
    (tmp_path / "xrays" / "masks").mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "xrays" / "masks" / "film-0.png")  # not an X-ray
    out = tmp_path / "nd"
    args = ["--near-duplicates", "1500", "--recall-subset", "1500", "--faiss-codes", "1500", "--gen-dir", str(tmp_path / "data")]
    assert main([*args, "--templates", str(tmp_path / "xrays"), "--out", str(out)]) == 0
    result = json.loads((out / "near_duplicates.json").read_text())
    assert result["templates"] == {"source": str(tmp_path / "xrays"), "images": 24}
    assert result["recall"] == 1.0 and result["faiss"]["same_pairs"] is True
    assert "faiss / lungcls" in capsys.readouterr().out
    assert main([*args, "--templates", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such folder" in err and "\n" not in err and not (tmp_path / "x").exists()


def test_the_text_plot_puts_each_stage_at_its_sizes_on_log_axes():
    from lungcls.benchmark.scale import text_plot

    sizes = [1000, 10000, 100000]
    result = {"image_size": 64, "sizes": sizes, "stages": {
        "linear": {"images": sizes, "seconds": [0.01 * n / 1000 for n in sizes], "exponent": 1.0},
        "flat": {"images": sizes, "seconds": [5.0, 5.0, 5.0], "exponent": 0.0},
        "same": {"images": sizes[:1], "seconds": [5.0], "exponent": None},
    }}
    rows = text_plot(result, width=41, rows_per_decade=4).splitlines()
    body = [r.split("|", 1)[1] for r in rows if "|" in r]
    linear = sorted((c, r) for r, line in enumerate(body) for c, ch in enumerate(line) if ch == "A")
    assert [c for c, _ in linear] == [0, 20, 40]  # one column per size, evenly spaced: a log axis
    assert [r for _, r in linear] == [len(body) - 1, len(body) - 5, len(body) - 9]  # a decade up per size
    assert [line.count("B") for line in body if "B" in line] == [2] and body[[i for i, l in enumerate(body) if "B" in l][0]][0] == "*"
    assert rows[0].lstrip().startswith("10 s") and rows[len(body) - 1].lstrip().startswith("0.01 s")
    assert "1,000" in rows[-3] and "100,000" in rows[-3] and "A linear (1.0); B flat (0.0); C same (None)" in rows[-2]


def test_the_ladder_says_which_targets_it_met():
    """Exponents above 1.1, and an epoch whose peak RSS grows by as much as the decoded set (a copy
    per process), are flagged NOT MET in scale.json and in the printed lines."""
    from lungcls.benchmark.scale import _result, format_targets

    def row(seconds, rss):
        return {"images": [1000, 16000], "seconds": seconds, "peak_rss_mb": rss}

    decoded = (16000 - 1000) * 64 * 64 / 2**20  # 58.6 MB
    stages = {"scan": row([1.0, 16.0], [300, 310]), "audit": row([1.0, 40.0], [400, 420]),
              "epoch_resnet18": row([4.0, 64.0], [1200, 1200 + decoded + 1]), "epoch_logistic": row([1.0, 16.0], [800, 820])}
    result = _result(stages, 64, [1000, 16000], "mmap")
    t = result["targets"]
    assert t["exponents"]["met"] is False and set(t["exponents"]["above"]) == {"audit"}
    assert t["epoch_resnet18_rss"]["met"] is False and t["epoch_logistic_rss"]["met"] is True
    lines = format_targets(result).splitlines()
    assert lines[0].startswith("NOT MET: every stage's exponent <= 1.1 (audit 1.33")
    assert any(line.startswith("NOT MET: epoch_resnet18 peak RSS (mmap cache) grew by 60 MB") for line in lines)
    assert any(line.startswith("met: epoch_logistic peak RSS (mmap cache) grew by 20 MB") for line in lines)


def test_the_epochs_train_on_the_cache_the_ladder_names():
    """--scale-cache reaches the training stages' dataset config (mmap unless told otherwise)."""
    from lungcls.benchmark.stages import _data_overrides

    base = {"root": "r", "image_size": 64}
    assert "dataset.cache=mmap" in _data_overrides(base)
    assert "dataset.cache=ram" in _data_overrides({**base, "cache": "ram"})
