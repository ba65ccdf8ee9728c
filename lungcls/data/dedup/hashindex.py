"""Near-duplicate search that does not compare every pair: multi-index hashing, exact within the
threshold, on sorted tables in numpy.

Comparing every pair of perceptual hashes costs time that grows with the square of the data set
(97 s for 21,165 X-rays, about a day for a million). Multi-index hashing (Norouzi et al. 2012) cuts
each code into bands and files it under each band's value. If band ``k`` is searched within
``radii[k]`` bit flips and ``sum(radii[k] + 1) > t``, two codes within ``t`` bits of each other agree
within its radius on at least one band (the pigeonhole principle: otherwise they would differ in at
least ``sum(radii[k] + 1)`` bits). Probing every bucket within those flips of each band of a query
therefore finds every pair within ``t``: recall is exact. Only the candidates found that way are
compared bit by bit.

Radii differ between bands (``t = 12`` over 6 bands: one band within 2 flips, five within 1), which
needs several times fewer probes than one radius for all bands; faiss's ``IndexBinaryMultiHash``
probes every band within the same flips and keeps each query's candidates in a hash set: on
codes drawn around real X-rays it took 4.5 times as long for 100,000 images and 217 s against 35 s
for a million, finding the same pairs (``lungcls-bench --near-duplicates`` times both on the
same codes). Each band's table is the index sorted by band value with an offset per value (a
counting sort), so a probe is two array reads, and queries are processed in band-value order so
that neighbouring probes read neighbouring memory; work is split over the machine's cores in
threads (numpy releases the GIL).

Chest films resemble each other, so many hash bits are nearly constant: bands of such bits put
everything in one bucket. The bits are therefore dealt to the bands by their measured entropy
(most informative first, in snake order), so every band separates films about equally well. How
bits are dealt never changes which pairs are found, only how many candidates are compared.

Near duplicates are matched full image against every crop level both ways (see
``lungcls.data.dedup.fingerprints``): the index holds every level of every image, the queries are the
full-image hashes, and a pair's distance is the smaller of the two directions.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from lungcls.data.dedup.parallel import cpu_count
from lungcls.errors import LungclsError
from lungcls.console import progress

MAX_BAND_BITS = 32  # a band's value is one uint64; wider bands only add probes
MAX_TABLE_BITS = 25  # a table has at most 2**25 offsets (128 MB); wider bands are hashed into it
# Every array of a step is bounded, whatever the number of codes: memory stays flat, and so does
# what the allocator keeps after the search (it keeps freed blocks as large as the largest freed).
STEP_PROBES = 1 << 18  # probes (queries x flips) looked up together
CANDIDATE_CHUNK = 1 << 18  # candidates verified together, however crowded the buckets
UNPACK_CHUNK = 1 << 14  # codes unpacked to bits together
# Measured cost of one probe and of one candidate (single core, ns), which steer ``plan``:
PROBE_NS, CANDIDATE_NS = 30.0, 40.0
POPCOUNT16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)
HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Plan:
    """How codes of ``bits`` bits are cut for threshold ``max_bits``: band ``k`` has ``widths[k]``
    bits and is probed within ``radii[k]`` flips (exact because ``sum(radii[k] + 1) > max_bits``)."""

    bits: int
    max_bits: int
    widths: tuple[int, ...]
    radii: tuple[int, ...]


def flip_count(width: int, radius: int) -> int:
    """Values within ``radius`` bit flips of a ``width``-bit value."""
    return sum(math.comb(width, k) for k in range(radius + 1))


def table_bits(width: int, n_index: int) -> int:
    """Bits of a band's table: the band's own width, or a hash of it for wide bands on few codes."""
    return min(width, MAX_TABLE_BITS, max(10, math.ceil(math.log2(max(n_index, 2))) + 1))


def plan(bits: int, max_bits: int, n_index: int, entropy: float | None = None) -> Plan:
    """The cheapest exact cut for an index of ``n_index`` codes whose bits carry ``entropy`` bits in
    all (default: uniform bits): for every number of bands, radii as equal as the threshold allows
    and the bands with the larger radius up to 8 bits wider, scored by probes per query plus the
    candidates they are expected to find (``PROBE_NS``, ``CANDIDATE_NS``)."""
    if max_bits < 0:
        raise LungclsError(f"near-duplicate threshold {max_bits} is negative; use 0 or more bits")
    if max_bits > bits // 2:
        raise LungclsError(f"near-duplicate threshold {max_bits} is too large for {bits}-bit hashes; use at most {bits // 2}")
    per_bit = 1.0 if entropy is None else max(entropy / bits, 1e-3)
    need = max_bits + 1  # sum(radius + 1) over the bands
    best: tuple[float, Plan] | None = None
    for m in range(1, min(need, bits) + 1):
        low = need // m - 1
        wider = need - m * (low + 1)  # bands with radius low + 1
        radii = (low + 1,) * wider + (low,) * (m - wider)
        for bonus in range(0, 9 if wider else 1):
            base = (bits - wider * bonus) // m
            widths = (min(base + bonus, MAX_BAND_BITS),) * wider + (min(base, MAX_BAND_BITS),) * (m - wider)
            if min(widths) < 1 or any(r >= w for r, w in zip(radii, widths)):
                continue
            cost = 0.0
            for w, r in zip(widths, radii):
                tb = table_bits(w, n_index)
                per_probe = n_index / 2.0 ** (per_bit * w) + (n_index / 2.0**tb if tb < w else 0.0)
                cost += flip_count(w, r) * (PROBE_NS + CANDIDATE_NS * per_probe)
            if best is None or cost < best[0]:
                best = (cost, Plan(bits, max_bits, widths, radii))
    if best is None:
        raise LungclsError(f"near-duplicate threshold {max_bits} is too large for {bits}-bit hashes; use at most {bits // 2}")
    return best[1]


def code_bits(codes: np.ndarray) -> int:
    """Bits per code of ``codes`` [..., bits] (bool) or packed [..., bits / 8] (uint8, ``np.packbits``)."""
    if codes.dtype == np.uint8:
        return codes.shape[-1] * 8
    if codes.dtype != np.bool_:
        raise LungclsError(f"hashes must be bool bits or uint8 bytes packed by np.packbits, not {codes.dtype}")
    return codes.shape[-1]


def bool_chunks(codes: np.ndarray, chunk: int = UNPACK_CHUNK):
    """``(start, bool [rows, bits])`` over ``codes`` [n, bits], bool or packed, a bounded chunk at a
    time: a million packed codes are never unpacked whole (eight times their size)."""
    for start in range(0, len(codes), chunk):
        part = codes[start : start + chunk]
        yield start, (np.unpackbits(part, axis=-1).view(bool) if codes.dtype == np.uint8 else part)


def bit_entropy(codes: np.ndarray) -> np.ndarray:
    """Entropy (bits) of each bit position of ``codes`` [n, bits] (bool or packed)."""
    if not len(codes):
        return np.ones(code_bits(codes))
    ones = np.zeros(code_bits(codes), dtype=np.int64)
    for _, part in bool_chunks(codes):
        ones += part.sum(axis=0)
    freq = ones / len(codes)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.nan_to_num(freq * np.log2(freq)) - np.nan_to_num((1 - freq) * np.log2(1 - freq))


def bit_order(entropy: np.ndarray, p: Plan) -> np.ndarray:
    """A permutation of the bit positions in which band ``k`` is the next ``widths[k]`` positions.
    Bits are dealt by decreasing ``entropy`` (per bit position, ``bit_entropy``) in snake order over
    the bands, so the bands hold about equal information; the least informative are left at the end."""
    ranked = np.argsort(-entropy, kind="stable").tolist()
    bands: list[list[int]] = [[] for _ in p.widths]
    forward = True
    rank = 0
    while rank < sum(p.widths):
        for k in range(len(bands)) if forward else reversed(range(len(bands))):
            if len(bands[k]) < p.widths[k]:
                bands[k].append(ranked[rank])
                rank += 1
        forward = not forward
    return np.array([b for band in bands for b in band] + ranked[rank:], dtype=np.int64)


def pack_words(codes: np.ndarray, order: np.ndarray) -> np.ndarray:
    """[n, bits] (bool or packed) -> uint64 [words, n]: bit ``i`` of the reordered code is bit
    ``i % 64`` of word ``i // 64`` (word-major, so one word of many codes is one contiguous read)."""
    n_words = -(-code_bits(codes) // 64)
    out = np.zeros((n_words, len(codes)), dtype=np.uint64)
    for start, part in bool_chunks(codes):
        packed = np.packbits(part[:, order], axis=1, bitorder="little")
        buf = np.zeros((len(packed), n_words * 8), dtype=np.uint8)
        buf[:, : packed.shape[1]] = packed
        out[:, start : start + len(part)] = buf.view(np.uint64).T
    return out


def band_values(words: np.ndarray, start: int, width: int) -> np.ndarray:
    """The ``width`` bits from bit ``start`` of every code in ``words`` [words, n], as uint64."""
    w, offset = divmod(start, 64)
    values = words[w] >> np.uint64(offset)
    if offset + width > 64:
        values = values | (words[w + 1] << np.uint64(64 - offset))
    return values & np.uint64((1 << width) - 1) if width < 64 else values


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 in ``x`` (uint8)."""
    mask = np.uint64(0xFFFF)
    total = POPCOUNT16[x & mask]
    for shift in (16, 32, 48):
        total += POPCOUNT16[(x >> np.uint64(shift)) & mask]
    return total


def flip_masks(width: int, radius: int) -> np.ndarray:
    """Every mask of at most ``radius`` set bits among ``width`` (uint64), the empty mask first."""
    masks = [0]
    for k in range(1, radius + 1):
        masks.extend(sum(1 << b for b in bits) for bits in itertools.combinations(range(width), k))
    return np.array(masks, dtype=np.uint64)


def bucket_keys(values: np.ndarray, width: int, tb: int) -> np.ndarray:
    """A band value's bucket: the value itself, or its top ``tb`` bits after a multiplicative hash."""
    if tb >= width:
        return values.astype(np.int64)
    return ((values * HASH_MULTIPLIER) >> np.uint64(64 - tb)).astype(np.int64)


def search(queries: np.ndarray, index: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, index row, distance) of every pair of ``queries`` [nq, bits] and ``index``
    [ni, bits] (bool, or packed uint8) within ``max_bits`` bits (each pair once per band that finds it)."""
    entropy = bit_entropy(index)  # one pass over the index: it steers both the plan and the bands
    p = plan(code_bits(index), max_bits, len(index), float(entropy.sum()))
    order = bit_order(entropy, p)
    qwords, iwords = pack_words(queries, order), pack_words(index, order)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    with progress("near-duplicate search", total=len(queries) * len(p.widths), unit="hash-band probes") as bar:
        start = 0
        for width, radius in zip(p.widths, p.radii):
            found.extend(_search_band(qwords, iwords, start, width, radius, max_bits, bar))
            start += width
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    return tuple(np.concatenate([f[k] for f in found]) for k in range(3))  # type: ignore[return-value]


def _search_band(qwords: np.ndarray, iwords: np.ndarray, start: int, width: int, radius: int, max_bits: int, bar):
    """The pairs that band ``[start, start + width)`` finds within ``radius`` flips, verified."""
    n_index = iwords.shape[1]
    tb = table_bits(width, n_index)
    keys = bucket_keys(band_values(iwords, start, width), width, tb)
    by_bucket = np.argsort(keys, kind="quicksort")
    offsets = np.zeros((1 << tb) + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=1 << tb), out=offsets[1:])
    del keys
    sorted_words = iwords[:, by_bucket]
    qvalues = band_values(qwords, start, width)
    by_value = np.argsort(qvalues, kind="quicksort")  # neighbouring probes read neighbouring memory
    qvalues, qsorted = qvalues[by_value], qwords[:, by_value]
    masks = flip_masks(width, radius)
    first = 1 if start < 64 else 0  # reject most candidates on one word outside this band
    rest = [w for w in range(qwords.shape[0]) if w != first]

    def verify(qrow: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dist = popcount(qsorted[first][qrow] ^ sorted_words[first][pos])
        keep = np.flatnonzero(dist <= max_bits)
        qrow, pos, dist = qrow[keep], pos[keep], dist[keep].astype(np.int32)
        for w in rest:
            dist += popcount(qsorted[w][qrow] ^ sorted_words[w][pos])
        keep = np.flatnonzero(dist <= max_bits)
        return by_value[qrow[keep]], by_bucket[pos[keep]], dist[keep]

    step_queries = max(1, STEP_PROBES // len(masks))

    def probe(lo_q: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        values = qvalues[lo_q : lo_q + step_queries]
        bucket = bucket_keys((masks[:, None] ^ values[None, :]).ravel(), width, tb)
        lo = offsets[bucket]
        count = offsets[bucket + 1] - lo
        hit = np.flatnonzero(count)
        lo, count, qhit = lo[hit], count[hit], hit % len(values) + lo_q
        results = []
        ends = np.cumsum(count)
        step = 0
        while step < len(count):  # at most CANDIDATE_CHUNK candidates at once: memory stays bounded
            stop = max(step + 1, int(np.searchsorted(ends, ends[step] - count[step] + CANDIDATE_CHUNK, side="right")))
            c = count[step:stop]
            total = int(c.sum())
            qrow = np.repeat(qhit[step:stop], c)
            pos = np.repeat(lo[step:stop] - (np.cumsum(c) - c), c) + np.arange(total, dtype=np.int64)
            results.append(verify(qrow, pos))
            step = stop
        return results

    out = []
    with ThreadPoolExecutor(cpu_count()) as pool:
        starts = range(0, len(qvalues), step_queries)
        for lo_q, result in zip(starts, pool.map(probe, starts)):
            out.extend(result)
            bar.update(min(step_queries, len(qvalues) - lo_q))
    return out


def _full_vs_levels(queries: np.ndarray, levels: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, d): full hash of query image i within ``max_bits`` of some level of image j."""
    n, n_levels, width = levels.shape
    rows, hits, dists = search(queries[:, 0, :], levels.reshape(n * n_levels, width), max_bits)
    return rows, hits // n_levels, dists


def best_per_pair(i: np.ndarray, j: np.ndarray, d: np.ndarray, n_b: int) -> list[tuple[int, int, int]]:
    """One ``(i, j, distance)`` per pair, the smallest distance, sorted by (i, j)."""
    if not len(i):
        return []
    key = i * n_b + j
    order = np.lexsort((d, key))
    key, d = key[order], d[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, d = key[first], d[first]
    return list(zip((key // n_b).tolist(), (key % n_b).tolist(), d.tolist()))


def indexed_near_pairs(a: np.ndarray, b: np.ndarray | None = None, max_bits: int = 12) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` for images within ``max_bits`` (full image of one against any crop
    level of the other, the smaller of both directions): of ``a`` [n, levels, bits] among
    themselves (i < j) or between ``a`` and ``b``; exactly the pairs that comparing all pairs gives.
    Hashes come as bool bits or packed (uint8, ``np.packbits`` along the bits: 8 times smaller)."""
    if a.ndim != 3 or (b is not None and (b.ndim != 3 or b.shape[1:] != a.shape[1:] or b.dtype != a.dtype)):
        raise LungclsError("perceptual hashes must be [images, levels, bits] with the same levels, bits and packing on both sides")
    if not len(a) or (b is not None and not len(b)):
        return []
    if b is None:
        i, j, d = _full_vs_levels(a, a, max_bits)
        keep = i != j
        i, j, d = i[keep], j[keep], d[keep]
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        return best_per_pair(lo, hi, d, len(a))
    i1, j1, d1 = _full_vs_levels(a, b, max_bits)  # a full vs b levels
    j2, i2, d2 = _full_vs_levels(b, a, max_bits)  # b full vs a levels
    return best_per_pair(np.concatenate([i1, i2]), np.concatenate([j1, j2]), np.concatenate([d1, d2]), len(b))
