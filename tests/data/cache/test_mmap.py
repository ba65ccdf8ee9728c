"""The memory-mapped decoded cache (``dataset.cache=mmap``): the same pixels as decoding into RAM,
mapped read-only from one file; ``cache=auto`` picks it (and says so) when the set would not fit
comfortably in RAM; a cache folder that cannot be written and a file changed under a running job
are one-line errors, never garbage. The DDP side (one decode per machine) is in test_ddp.py."""

from __future__ import annotations

import logging
import os
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from lungcls.data.cache import decoded as cache_module
from lungcls.data.datamodule import LungDataModule
from lungcls.data.cache.machine import MachineImages
from lungcls.data.cache.mapped import mapped_file
from lungcls.errors import LungclsError

from conftest import make_class_tree

CLASSES = ["COVID", "Normal", "Viral Pneumonia"]


def _cfg(root, **extra):
    return {"name": "folder", "layout": "folder", "root": str(root), "classes": CLASSES, "normal_class": "Normal",
            "image_size": 24, "batch_size": 4, "normalization": "dataset", "val_fraction": 0.2, "test_fraction": 0.2,
            "duplicates": "none", **extra}


def _setup(cfg) -> LungDataModule:
    dm = LungDataModule(cfg)
    dm.setup("fit")
    return dm


@pytest.fixture
def tree(tmp_path):
    return make_class_tree(tmp_path / "tree", {name: 6 for name in CLASSES}, size=32)


def test_mmap_cache_holds_the_same_pixels_read_only_in_one_file(tree, tmp_path):
    """Users switch to cache=mmap for sets larger than RAM: batches, statistics and splits must not change."""
    ram = _setup(_cfg(tree, cache="ram"))
    mapped = _setup(_cfg(tree, cache="mmap", cache_dir=str(tmp_path / "cache")))
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 1 and files[0].with_name(files[0].name + ".json").is_file()
    assert torch.equal(ram.images, mapped.images)
    assert (ram.mean, ram.std) == (mapped.mean, mapped.std)
    maps = Path("/proc/self/maps")
    if maps.is_file():  # Linux: the images are this file's pages, mapped without write permission
        perms = {line.split()[1] for line in maps.read_text().splitlines() if line.endswith(str(files[0]))}
        assert perms and all(p.startswith("r-") for p in perms), perms
    on_disk = np.load(files[0], mmap_mode="r")  # numpy's own format: any tool reads it
    assert np.array_equal(on_disk, ram.images.numpy())
    x_ram, y_ram, _ = next(iter(ram.loader("val")))
    x_map, y_map, _ = next(iter(mapped.loader("val")))
    assert torch.equal(x_ram, x_map) and torch.equal(y_ram, y_map)
    # a second run maps the kept file instead of decoding again
    again = _setup(_cfg(tree, cache="mmap", cache_dir=str(tmp_path / "cache")))
    assert torch.equal(again.images, ram.images) and sorted((tmp_path / "cache").glob("*.npy")) == files


def test_auto_memory_maps_a_set_that_would_not_fit_in_ram_and_says_so(tree, monkeypatch, caplog):
    """The decision is the decoded size against the RAM available now, in one log line."""
    decoded = 18 * 24 * 24
    vm = namedtuple("vm", "available")
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm(decoded))  # less than twice the set: mmap
    with caplog.at_level(logging.INFO):
        dm = _setup(_cfg(tree, cache="auto"))
    assert dm._cache_where == "mmap"
    assert [r for r in caplog.messages if "cache=auto" in r and "memory-mapped" in r]
    file, temporary = mapped_file([s.path for s in dm.samples], 24, None)
    assert temporary and file.is_file()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm(100 * decoded))  # plenty: RAM, as before
    assert cache_module.choose_cache_device("auto", decoded) in ("ram", "gpu")


def test_a_cache_folder_that_cannot_be_written_is_one_line(tree, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(LungclsError, match=r"dataset.cache_dir=.*locked is not writable; point dataset.cache_dir at"):
            _setup(_cfg(tree, cache="mmap", cache_dir=str(locked)))
    finally:
        locked.chmod(0o700)


def test_a_file_under_the_cache_dir_is_refused_not_read(tree, tmp_path):
    """A plain file where the cache folder should be is the same one-line error (works as root too)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LungclsError, match=r"dataset.cache_dir=.*cannot be created"):
        _setup(_cfg(tree, cache="mmap", cache_dir=str(blocker / "cache")))


def test_a_cache_file_changed_under_a_running_job_is_refused(tree, tmp_path):
    """Another job rewriting the file must stop this one with one line, not feed it other pixels."""
    dm = _setup(_cfg(tree, cache="mmap", cache_dir=str(tmp_path / "cache")))
    loader = dm.loader("train")
    next(iter(loader))  # reads fine
    file = next((tmp_path / "cache").glob("*.npy"))
    with file.open("r+b") as f:  # rewritten in place, same size
        f.seek(-16, os.SEEK_END)
        f.write(b"\xff" * 16)
    with pytest.raises(LungclsError, match="changed while this job was reading it"):
        next(iter(loader))


def test_a_cache_file_that_does_not_match_its_record_is_refused_by_the_processes_that_map_it(tree, tmp_path):
    """The other processes of a machine check size and a sampled hash before mapping the file."""
    dm = _setup(_cfg(tree, cache="mmap", cache_dir=str(tmp_path / "cache")))
    file = next((tmp_path / "cache").glob("*.npy"))
    with file.open("r+b") as f:
        f.truncate(file.stat().st_size - 24 * 24)
    follower = MachineImages([s.path for s in dm.samples], 24, "mmap", str(tmp_path / "cache"), 10**8)
    with pytest.raises(LungclsError, match="does not match its record"):
        follower.map_now()


def test_processes_launched_together_decode_once_and_map_the_first_ones_file(tree, tmp_path, monkeypatch, caplog):
    """torchrun / srun start every process at once with its rank in the environment: the first of
    the machine decodes into the file, another waits for it, maps it and measures the same
    normalisation from it without decoding anything itself."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with caplog.at_level(logging.INFO):
        first = _setup(_cfg(tree, cache="auto"))
        monkeypatch.setenv("LOCAL_RANK", "1")
        monkeypatch.delenv("LUNGCLS_TRAIN_STATS", raising=False)  # not launched by the first process
        other = _setup(_cfg(tree, cache="auto"))
    decoded = [m for m in caplog.messages if m.startswith("decoded ")]
    assert len(decoded) == 1 and "memory-mapped" in decoded[0]
    assert any(m.startswith("process 1 of this machine mapped") for m in caplog.messages)
    assert torch.equal(first.images, other.images)
    assert (first.mean, first.std) == (other.mean, other.std)
    file, temporary = mapped_file([s.path for s in first.samples], 24, None)
    assert temporary and file.is_file()
    other._machine.mapped.discard()  # as the first process does once every process has mapped it
    assert not file.exists()
    other._machine.check()  # a removed temporary file is not a changed one: the mapping stays valid


def test_batches_from_a_mapped_cache_leave_no_pages_in_the_process(tmp_path, monkeypatch):
    """An epoch over a set larger than RAM must not show the whole file in every process's RSS
    (schedulers add those up per rank): the writer hands its pages back as it goes, rows are read
    from the file in the asked order, and the mapping keeps nothing resident; a file cut short
    under the job is one line, not garbage."""
    from lungcls.data.cache import mapped as mapped_module
    from lungcls.data.cache import npyfile
    from lungcls.data.cache.mapped import mapping_memory, write_mapped

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (3000, 1, 32, 32), dtype=np.uint8))
    resident_while_writing = []
    release = npyfile.PageBudget.release

    def measured_release(budget):
        resident_while_writing.append(mapping_memory(tmp_path / f"images.npy.tmp{os.getpid()}.npy"))
        release(budget)

    for module in (npyfile, mapped_module):
        monkeypatch.setattr(module, "RELEASE_BYTES", 256 * 1024)  # the 3 MB file in twelve parts
    monkeypatch.setattr(npyfile.PageBudget, "release", measured_release)
    mapped = write_mapped(tmp_path / "images.npy", [str(i) for i in range(len(images))], 32, False, images=images)
    if mapping_memory(mapped.file) is None:
        pytest.skip("no per-mapping memory figures on this system")
    assert len(resident_while_writing) >= 10  # handed back every 256 KB written ...
    assert max(m["rss"] for m in resident_while_writing) < 2.0  # ... so never the whole 2.9 MB at once
    for rows in (torch.from_numpy(rng.permutation(3000)[:256]), torch.arange(100, 900), torch.tensor([5, 6, 7, 2, 3, 2999, 0])):
        assert torch.equal(mapped.take(rows), images[rows])
    for start in range(0, 3000, 256):  # a whole epoch
        mapped.take(torch.arange(start, min(start + 256, 3000)))
    assert mapping_memory(mapped.file)["rss"] < 1.0, mapping_memory(mapped.file)
    assert mapped.images[7].sum() == images[7].sum() and mapping_memory(mapped.file)["rss"] > 0  # the mapping itself works
    with open(mapped.file, "r+b") as f:
        f.truncate(mapped.file.stat().st_size - 32 * 32 * 10)
    with pytest.raises(LungclsError, match="changed while this job was reading it"):
        mapped.take(torch.tensor([2995]))
    mapped.stamp = mapped_module._stamp(mapped.file)  # a change the stat does not see: the short read does
    with pytest.raises(LungclsError, match="shorter than when it was mapped"):
        mapped.take(torch.tensor([2995]))
