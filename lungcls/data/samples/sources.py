"""Where each image comes from (its hospital, scanner or public collection), read from its path.

A model that will be used at another hospital has to be tested on a hospital it never saw
(leave-one-source-out, ``dataset.folds=source``); that needs a source per image. A manifest names it
in a column (``dataset.source_column``); a folder tree names it in its paths:

- ``dataset.source_from=folder``: the first folder of the image's path below the data root that is
  not a class name nor ``images`` (``<root>/<Class>/<source>/x.png`` or ``<root>/<source>/<Class>/x.png``);
- ``dataset.source_from=regex`` with ``dataset.source_regex``: the first group of the pattern (or the
  group named ``source``) searched in the path relative to the data root.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lungcls.data.samples.sample import Sample
from lungcls.errors import LungclsError

SOURCE_FROM = ("folder", "regex")
NOT_SOURCES = ("images", "masks", "lesion_masks")


def check_source_settings(cfg: Mapping[str, Any]) -> str | None:
    """``dataset.source_from`` checked (with ``source_regex`` and ``source_column``); None when unset."""
    how = cfg["source_from"] if "source_from" in cfg else None
    if how is None:
        return None
    if how not in SOURCE_FROM:
        raise LungclsError(f"dataset.source_from={how} is not one of {', '.join(SOURCE_FROM)} (or null); "
                           "e.g. dataset.source_from=folder")
    if cfg["source_column"]:
        raise LungclsError("dataset.source_column and dataset.source_from both name the source; use one of them")
    if how == "regex":
        pattern = cfg["source_regex"]
        if not pattern:
            raise LungclsError("dataset.source_from=regex needs dataset.source_regex, e.g. "
                               "dataset.source_regex='^([^/]+)/' (the first group is the source)")
        try:
            compiled = re.compile(str(pattern))
        except re.error as e:
            raise LungclsError(f"dataset.source_regex={pattern} is not a regular expression ({e}); fix the pattern") from None
        if compiled.groups < 1:
            raise LungclsError(f"dataset.source_regex={pattern} has no group; put the source in parentheses, e.g. '^([^/]+)/'")
    return str(how)


def _relative(path: str, root: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), root)).as_posix()


def _from_folder(rel: str, classes: Sequence[str]) -> str | None:
    parts = [p for p in rel.split("/")[:-1] if p not in classes and p not in NOT_SOURCES and p != ".."]
    return parts[0] if parts else None


def _from_regex(rel: str, pattern: re.Pattern) -> str | None:
    match = pattern.search(rel)
    if match is None:
        return None
    value = match.group("source") if "source" in pattern.groupindex else match.group(1)
    return value or None


def attach_sources(samples: Sequence[Sample], cfg: Mapping[str, Any], root: Path) -> list[Sample]:
    """``samples`` with ``source`` read from their paths as ``dataset.source_from`` says; an image
    whose path names no source is a one-line error naming it."""
    how = check_source_settings(cfg)
    if how is None:
        return list(samples)
    classes = list(cfg["classes"])
    pattern = re.compile(str(cfg["source_regex"])) if how == "regex" else None
    out = []
    for s in samples:
        rel = _relative(s.path, root)
        source = _from_folder(rel, classes) if pattern is None else _from_regex(rel, pattern)
        if source is None:
            fix = ("put each source's images in a folder of its own (<root>/<Class>/<source>/...)" if pattern is None
                   else "change dataset.source_regex so its group matches every path")
            raise LungclsError(f"dataset.source_from={how}: no source in the path {rel} (relative to {root}); {fix}")
        out.append(replace(s, source=source))
    return out
