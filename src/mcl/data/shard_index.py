"""Which tar shards a source names, and how many samples each holds.

A shard source is one of
- a brace pattern: ``data/train-{000000..000099}.tar`` (zero-padded ranges, ``{a,b}`` lists, several
  groups allowed);
- one ``.tar`` file;
- a folder: the shards listed by its ``shards.json``, else its top-level ``*.tar`` files, sorted;
- an index json (``shards.json`` or ``*.index.json``);
- a ``.txt`` list of shard paths (relative ones resolved against the txt's folder; ``#`` comments).

Shards use the WebDataset layout: members are grouped by *key* (the member path up to the first dot
of its file name: ``000123.jpg`` and ``000123.cls`` are one sample) and a sample's image is its
first member with an image extension; other members are ignored, as are groups without an image.

The index (written by ``mcl data shards`` / ``mcl data index``) is
``{"format": "mcl-shards", "version": 1, "total": N, "shards": [{"path", "samples", "bytes"}, ...]}``
with paths relative to the json's folder. A shard listed by a pattern/folder/txt takes its count
from a ``shards.json`` in its own folder when that names it with the same byte size; otherwise its
tar headers are read to count it (every process does this: write an index for large sets).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mcl.data.sources import IMAGE_EXTENSIONS, SourceError
from mcl.engine.atomic import write_text_atomic

INDEX_NAME = "shards.json"
CLASSES_NAME = "classes.json"   # class names of labeled shards, beside them (supervised pretraining)
INDEX_FORMAT = "mcl-shards"
SHARD_SUFFIXES = (".tar",)
IMAGE_EXTS = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)
MAX_PATTERN_SHARDS = 1_000_000

_GROUP = re.compile(r"\{([^{}]*)\}")
_PATTERN = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")
_KEY = re.compile(r"^((?:.*/)?[^./][^.]*)\.([^/]+)$")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    path: Path
    samples: int


@dataclass(frozen=True)
class ShardList:
    """Shards in a fixed order (the same on every process) with their sample counts."""

    source: str
    shards: tuple[Shard, ...]

    @property
    def total(self) -> int:
        return sum(s.samples for s in self.shards)

    def offsets(self) -> list[int]:
        """Global index of each shard's first sample (shards numbered in list order)."""
        out, n = [], 0
        for s in self.shards:
            out.append(n)
            n += s.samples
        return out


# --------------------------------------------------------------------------------------------
# naming rules


def split_key(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a member name (``a/000123.seg.png`` -> ``("a/000123", "seg.png")``);
    None for names without an extension or hidden ones (``._x.jpg``)."""
    m = _KEY.match(name)
    return (m.group(1), m.group(2)) if m else None


def image_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The image member of each sample of an open tar, in stored order (works in streaming mode)."""
    key, taken = None, False
    for member in tar:
        if not member.isfile():
            continue
        parts = split_key(member.name)
        if parts is None:
            continue
        if parts[0] != key:
            key, taken = parts[0], False
        if not taken and parts[1].lower() in IMAGE_EXTS:
            taken = True
            yield member


def read_class_names(shards: ShardList) -> list[str] | None:
    """The class names in ``classes.json`` beside the first shard (None if there is none)."""
    path = Path(shards.shards[0].path).parent / CLASSES_NAME
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(
            f"{path}: unreadable class list ({exc}); rewrite the shards with mcl data shards --labels"
        ) from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise SourceError(
            f"{path}: should be a JSON list of class names; rewrite the shards with mcl data shards --labels"
        )
    return names


def count_samples(path: Path) -> int:
    """Samples in one shard, from its tar headers only (the data is seeked over)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            return sum(1 for _ in image_members(tar))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SourceError(f"{path}: not a readable tar shard ({exc}); rewrite it or drop it from the list") from None


def is_shard_name(name: str) -> bool:
    return name.lower().endswith(SHARD_SUFFIXES) and not name.startswith(".")


def is_index_name(name: str) -> bool:
    return name == INDEX_NAME or name.lower().endswith(".index.json")


# --------------------------------------------------------------------------------------------
# brace patterns


def is_pattern(source: str) -> bool:
    """True if ``source`` holds a ``{a..b}`` range or ``{x,y}`` list."""
    return bool(_PATTERN.search(str(source)))


def expand_braces(pattern: str) -> list[str]:
    """All names of a brace pattern, in order; a malformed pattern raises :class:`SourceError`."""
    out = _expand(pattern, pattern)
    if len(out) > MAX_PATTERN_SHARDS:
        raise SourceError(f"{pattern}: expands to {len(out)} names (more than {MAX_PATTERN_SHARDS}); check the ranges")
    return out


def _expand(text: str, pattern: str) -> list[str]:
    m = _GROUP.search(text)
    if m is None:
        if "{" in text or "}" in text:
            raise SourceError(f"{pattern}: unbalanced braces; write ranges as {{000000..000099}}")
        return [text]
    head, tail = text[: m.start()], text[m.end():]
    if "{" in head or "}" in head:
        raise SourceError(f"{pattern}: unbalanced braces; write ranges as {{000000..000099}}")
    rest = _expand(tail, pattern)
    return [head + option + r for option in _options(m.group(1), pattern) for r in rest]


def _options(body: str, pattern: str) -> list[str]:
    r = _RANGE.match(body)
    if r:
        a, b = r.group(1), r.group(2)
        lo, hi = int(a), int(b)
        if lo > hi:
            raise SourceError(f"{pattern}: range {{{body}}} runs backwards; write it as {{{b}..{a}}}")
        if hi - lo >= MAX_PATTERN_SHARDS:
            raise SourceError(f"{pattern}: range {{{body}}} is too long; check the bounds")
        width = len(a) if a.startswith("0") and len(a) > 1 else 0
        return [str(i).zfill(width) for i in range(lo, hi + 1)]
    if "," in body and ".." not in body:
        return body.split(",")
    raise SourceError(f"{pattern}: cannot read the brace group {{{body}}}; use {{000000..000099}} (digits) "
                      "or {a,b,c}")


# --------------------------------------------------------------------------------------------
# listing


def is_shard_source(source) -> bool:
    """Whether ``data.format=auto`` reads ``source`` as tar shards (see the module doc for the forms)."""
    text = str(source)
    if is_pattern(text):
        return True
    path = Path(text).expanduser()
    if is_shard_name(path.name) or is_index_name(path.name):
        return True
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            return True
        with os.scandir(path) as entries:
            return any(e.is_file() and is_shard_name(e.name) for e in entries)
    if path.suffix.lower() == ".txt" and path.is_file():
        first = next(iter(_txt_entries(path)), "")
        return is_shard_name(Path(first).name)
    return False


def list_shards(source) -> ShardList:
    """The shards of ``source`` with their sample counts.

    :class:`SourceError` if any is missing or none hold a sample.
    """
    text = str(source)
    if is_pattern(text):
        paths = [Path(p).expanduser() for p in expand_braces(text)]
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise SourceError(f"{path}: no such file or folder; give a shard pattern like "
                              "data/train-{000000..000099}.tar, "
                              "a folder of .tar shards, a shards.json index or a .txt list of shards")
        if path.is_dir() and (path / INDEX_NAME).is_file():
            return _finish(text, read_index(path / INDEX_NAME))
        if path.is_dir():
            paths = sorted(p for p in path.iterdir() if p.is_file() and is_shard_name(p.name))
            if not paths:
                raise SourceError(f"{path}: no *.tar shards and no {INDEX_NAME} in this folder; "
                                  "write shards with `mcl data shards` or point data.source at them")
        elif is_index_name(path.name):
            return _finish(text, read_index(path))
        elif path.suffix.lower() == ".txt":
            paths = [p if p.is_absolute() else path.parent / p for p in map(Path, _txt_entries(path))]
        elif is_shard_name(path.name):
            paths = [path]
        else:
            raise SourceError(f"{path}: not a shard source; give a .tar, a brace pattern, a folder of .tar shards, "
                              "a shards.json index or a .txt list of shards")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SourceError(f"{text}: {len(missing)} of {len(paths)} shards missing (first: {missing[0]}); "
                          "fix the pattern or list, or write the missing shards")
    return _finish(text, _counted(paths))


def _finish(source: str, shards: list[Shard]) -> ShardList:
    if not shards:
        raise SourceError(f"{source}: lists no shards; point data.source at a non-empty set of shards")
    out = ShardList(source, tuple(shards))
    if out.total == 0:
        raise SourceError(f"{source}: {len(shards)} shards but no image in them "
                          f"(extensions {', '.join(sorted(IMAGE_EXTS))}); "
                          "check how they were written")
    return out


def _txt_entries(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read the list ({exc}); check the path and that it is UTF-8 text") from None
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def _counted(paths: list[Path]) -> list[Shard]:
    """Counts from a ``shards.json`` beside each shard where it is up to date, else from the tar headers."""
    known: dict[str, tuple[int, int]] = {}
    for folder in sorted({p.parent for p in paths}):
        index = folder / INDEX_NAME
        if index.is_file():
            known.update(_index_entries(index))
    out, counted = [], 0
    for p in paths:
        entry = known.get(os.path.abspath(p))
        if entry is not None and entry[1] == p.stat().st_size:
            out.append(Shard(p, entry[0]))
        else:
            out.append(Shard(p, count_samples(p)))
            counted += 1
    if counted > 16:
        log.warning("counted the samples of %d shards from their tar headers; write an index once with "
                    "`mcl data index` so that no process has to", counted)
    return out


# --------------------------------------------------------------------------------------------
# the index file


def _index_entries(index: Path) -> dict[str, tuple[int, int]]:
    """Absolute shard path -> (samples, bytes) as an index file states them."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{index}: unreadable shard index ({exc}); rewrite it with `mcl data index`") from None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("shards"), list):
        raise SourceError(f"{index}: not an mcl shard index (needs format '{INDEX_FORMAT}' and a shards list); "
                          "rewrite it with `mcl data index`")
    out = {}
    for i, entry in enumerate(data["shards"]):
        ok = isinstance(entry, dict) and isinstance(entry.get("path"), str) and \
            isinstance(entry.get("samples"), int) and entry["samples"] >= 0 and isinstance(entry.get("bytes"), int)
        if not ok:
            raise SourceError(f"{index}: shards[{i}] needs path, samples and bytes; rewrite it with `mcl data index`")
        out[os.path.abspath(index.parent / entry["path"])] = (entry["samples"], entry["bytes"])
    return out


def read_index(index: Path) -> list[Shard]:
    """The shards an index lists, in its order; a stale entry (size changed) is recounted from the tar."""
    shards = []
    for path, (samples, size) in _index_entries(index).items():
        p = Path(path)
        if not p.is_file():
            raise SourceError(f"{index}: lists {p}, which does not exist; restore the shard or rewrite the index")
        if p.stat().st_size != size:
            log.warning("%s: %s changed size since the index was written; counting its samples again", index, p)
            samples = count_samples(p)
        shards.append(Shard(p, samples))
    return shards


def write_index(index: Path, shards: list[Shard]) -> Path:
    """Write ``index`` atomically (temporary file + rename); paths relative to its folder where possible."""
    entries = []
    for s in shards:
        try:
            rel = os.path.relpath(s.path, index.parent)
        except ValueError:                      # another drive (Windows)
            rel = os.path.abspath(s.path)
        entries.append({"path": Path(rel).as_posix(), "samples": s.samples, "bytes": Path(s.path).stat().st_size})
    data = {"format": INDEX_FORMAT, "version": 1, "total": sum(s.samples for s in shards), "shards": entries}
    write_text_atomic(index, json.dumps(data, indent=1) + "\n")
    return index
