"""The indexed near-duplicate search finds exactly the pairs that comparing all pairs finds (planted
pairs at every distance up to the threshold, exactly at it and one past it, full-vs-crop copies);
the read pass gives the same fingerprints on several processes as in one, and reads only new or
changed files when a cache folder is set; progress is one summary line when not on a terminal."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from lungcls.data.dedup import fingerprints as fpmod
from lungcls.data.dedup.fingerprints import CROP_LEVELS, HASH_BITS, compute_fingerprints, load_or_compute, near_pairs, near_pairs_brute
from lungcls.console import progress, tracked


def chest_like_codes(n: int, seed: int) -> np.ndarray:
    """[n, levels, bits] codes drawn around a few templates with skewed bit frequencies (many near-
    constant bits, as chest X-ray hashes have), crops a few bits off their full hash."""
    rng = np.random.default_rng(seed)
    freq = np.clip(rng.beta(0.5, 0.5, HASH_BITS), 0.02, 0.98)
    templates = rng.random((8, HASH_BITS)) < freq
    full = templates[rng.integers(0, len(templates), n)]
    redraw = rng.random((n, HASH_BITS)) < 0.35
    full = np.where(redraw, rng.random((n, HASH_BITS)) < freq, full)
    codes = np.repeat(full[:, None, :], len(CROP_LEVELS), axis=1)
    for k in range(1, len(CROP_LEVELS)):
        codes[:, k] ^= rng.random((n, HASH_BITS)) < 0.04 * k
    return codes


def plant(codes: np.ndarray, distances: list[int], seed: int) -> list[tuple[int, int, int]]:
    """Overwrite image j with a copy of image i at exactly ``d`` bits (every level; half of them with
    the copy's full hash taken from a crop level of i). Returns the planted (i, j, d)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(codes))
    planted = []
    for k, d in enumerate(distances):
        i, j = int(order[2 * k]), int(order[2 * k + 1])
        flip = np.zeros(HASH_BITS, dtype=bool)
        flip[rng.choice(HASH_BITS, d, replace=False)] = True
        codes[j] = codes[i] ^ flip
        if k % 2:
            codes[j, 0] = codes[i, 1 + k % (len(CROP_LEVELS) - 1)] ^ flip
        planted.append((min(i, j), max(i, j), d))
    return planted


@pytest.mark.parametrize("max_bits", [6, 12])
def test_index_finds_exactly_the_pairs_all_pairs_find(max_bits):
    codes = chest_like_codes(1200, seed=max_bits)
    distances = [d for d in range(max_bits + 2) for _ in range(3)]  # 0..t, exactly t, and t + 1
    planted = plant(codes, distances, seed=1)
    found = near_pairs(codes, max_bits=max_bits)
    assert found == near_pairs_brute(codes, max_bits=max_bits)
    pairs = {(i, j): d for i, j, d in found}
    for i, j, d in planted:
        if d <= max_bits:
            assert (i, j) in pairs and pairs[(i, j)] <= d
    assert all(d <= max_bits for d in pairs.values())
    assert len([p for p in planted if p[2] <= max_bits]) <= len(found)


def test_index_between_two_sets_matches_brute_force():
    codes = chest_like_codes(900, seed=3)
    plant(codes, [12, 12, 11, 13, 5, 0], seed=4)
    a, b = codes[:450], codes[450:]
    assert near_pairs(a, b, max_bits=12) == near_pairs_brute(a, b, max_bits=12)
    assert near_pairs(np.packbits(a, axis=-1), np.packbits(b, axis=-1), max_bits=12) == near_pairs_brute(a, b, max_bits=12)
    assert near_pairs(a[:0], b, max_bits=12) == []


def write_images(folder, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        arr = (rng.random((8, 8)) * 255).astype(np.uint8)
        path = folder / f"img-{k}.png"
        Image.fromarray(arr).resize((40, 40), Image.Resampling.BILINEAR).save(path)
        paths.append(str(path))
    return paths


def test_read_pass_on_processes_equals_one_process(tmp_path):
    paths = write_images(tmp_path / "images", 140)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    paths.append(str(tmp_path / "images" / "broken.png"))
    one = compute_fingerprints(paths, workers=1)
    two = compute_fingerprints(paths, workers=2)
    assert one.pixel_hash == two.pixel_hash and (one.phash == two.phash).all()
    assert list(two.errors) == [paths[-1]] and two.pixel_hash[-1] is None


def test_a_grown_data_set_reads_only_the_new_file(tmp_path, monkeypatch):
    paths = write_images(tmp_path / "images", 20)
    cache = tmp_path / "cache"
    first = load_or_compute(paths, cache)
    read: list[list[str]] = []
    real = fpmod.compute_fingerprints

    def counting(todo, **kwargs):
        read.append(list(todo))
        return real(todo, **kwargs)

    monkeypatch.setattr(fpmod, "compute_fingerprints", counting)
    grown = paths + write_images(tmp_path / "more", 1, seed=5)
    again = load_or_compute(grown, cache)
    assert read == [grown[-1:]]
    assert again.pixel_hash[:20] == first.pixel_hash and (again.phash[:20] == first.phash).all()
    assert again.pixel_hash == real(grown, workers=1).pixel_hash
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(paths[3])  # changed in place: read again
    os.utime(paths[3], ns=(1, 10**18))
    read.clear()
    changed = load_or_compute(grown, cache)
    assert read == [[paths[3]]] and changed.pixel_hash[3] != first.pixel_hash[3]


def test_progress_is_one_summary_line_off_a_terminal():
    stream = io.StringIO()
    with progress("audit: read", total=250, stream=stream) as bar:
        for _ in range(5):
            bar.update(50)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("audit: read: 250 images in ") and lines[0].endswith(" images/s)")
    assert list(tracked(range(3), "x", 3)) == [0, 1, 2]


def test_audit_read_pass_of_a_grown_data_set_reads_only_the_new_file(tmp_path, monkeypatch):
    from lungcls.audit import scan as scanmod
    from lungcls.data.samples.sample import Sample

    paths = write_images(tmp_path / "images", 12)
    samples = [Sample(p, k % 2) for k, p in enumerate(paths)]
    first = scanmod.scan(samples, "border", 0.1, cache_dir=str(tmp_path / "cache"))
    read: list[str] = []
    real = scanmod.scan_files

    def counting(chunk, **kwargs):
        read.extend(s.path for s in chunk)
        return real(chunk, **kwargs)

    monkeypatch.setattr(scanmod, "scan_files", counting)
    grown = samples + [Sample(write_images(tmp_path / "more", 1, seed=9)[0], 1)]
    again = scanmod.scan(grown, "border", 0.1, cache_dir=str(tmp_path / "cache"))
    assert read == [grown[-1].path]
    assert again.fingerprints.pixel_hash[:12] == first.fingerprints.pixel_hash
    assert again.stats[:12] == first.stats and np.allclose(again.features[:12], first.features)
    fresh = scanmod.scan(grown, "border", 0.1)
    assert again.stats == fresh.stats and np.allclose(again.features, fresh.features)


def test_a_cache_folder_that_cannot_be_written_is_one_line(tmp_path):
    from lungcls.errors import LungclsError

    paths = write_images(tmp_path / "images", 3)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(LungclsError) as e:
        load_or_compute(paths, blocker / "cache")
    assert "is not a writable folder" in str(e.value) and "dataset.cache_dir=null" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "widths, radii, table_cap, chunk",
    [
        ((24, 24, 24, 24, 24, 24), (2, 1, 1, 1, 1, 1), 25, 1 << 22),  # unequal radii, exact tables
        ((29, 23, 23, 23, 23, 23), (2, 1, 1, 1, 1, 1), 12, 1 << 22),  # wider bands hashed into small tables
        ((32, 32, 32, 32), (3, 3, 3, 3), 25, 2000),  # few wide bands; candidates verified 2,000 at a time
        ((11,) * 13, (0,) * 13, 25, 1 << 22),  # exact match on many narrow bands
    ],
)
def test_every_band_plan_finds_exactly_the_pairs_all_pairs_find(monkeypatch, widths, radii, table_cap, chunk):
    from lungcls.data.dedup import hashindex

    assert sum(r + 1 for r in radii) > 12
    monkeypatch.setattr(hashindex, "plan", lambda bits, max_bits, n, entropy=None: hashindex.Plan(bits, max_bits, widths, radii))
    monkeypatch.setattr(hashindex, "MAX_TABLE_BITS", table_cap)
    monkeypatch.setattr(hashindex, "CANDIDATE_CHUNK", chunk)
    monkeypatch.setattr(hashindex, "STEP_PROBES", 97 * 25)  # several steps per band, the last one short
    monkeypatch.setattr(hashindex, "UNPACK_CHUNK", 97)
    codes = chest_like_codes(700, seed=len(widths))
    plant(codes, [d for d in range(14) for _ in range(2)], seed=2)
    expected = near_pairs_brute(codes, max_bits=12)
    assert near_pairs(codes, max_bits=12) == expected
    assert near_pairs(np.packbits(codes, axis=-1), max_bits=12) == expected  # packed hashes, unpacked 97 at a time


@pytest.mark.parametrize("max_bits", [0, 1, 6, 12, 20, 40, 72])
@pytest.mark.parametrize("n_index", [10, 100_000, 6_000_000])
def test_the_chosen_plan_is_exact_by_the_pigeonhole_principle(max_bits, n_index):
    from lungcls.data.dedup.hashindex import plan

    for entropy in (None, 60.0, 130.0):
        p = plan(HASH_BITS, max_bits, n_index, entropy)
        assert sum(r + 1 for r in p.radii) > max_bits
        assert all(0 <= r < w <= 32 for r, w in zip(p.radii, p.widths)) and sum(p.widths) <= HASH_BITS


def test_a_threshold_past_half_the_bits_is_one_line():
    from lungcls.data.dedup.hashindex import plan
    from lungcls.errors import LungclsError

    with pytest.raises(LungclsError, match="use at most 72"):
        plan(HASH_BITS, 73, 1000)
