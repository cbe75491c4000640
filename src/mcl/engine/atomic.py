"""The one writer of the project's files: readers see the old content or the new, never half of it.

Every file a run or a command leaves behind (checkpoints, configs, results, charts, shards, the synthetic
scenes, benchmark images) is written through :class:`AtomicFile` (streams, such as a tar shard) or
:func:`write_atomic` (everything else). Live logs that grow while a run goes on (``logs/metrics.csv``, a demo
stage's log) are appended instead: a reader wants the lines so far. No heavy imports here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


class AtomicFile:
    """A temporary file beside ``out`` (``.NAME.*.tmp``), open for binary writing as ``file``;
    :meth:`commit` renames it to ``out``, :meth:`discard` removes it. ``fsync``: flush the data to the disk
    before the rename (checkpoints: a power cut after the rename must not leave an empty file)."""

    def __init__(self, out: Path, fsync: bool = False):
        self.out, self.fsync = Path(out), fsync
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.out.parent, prefix=f".{self.out.name}.", suffix=".tmp")
        self.tmp = Path(tmp)
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> Path:
        if self.fsync:
            self.file.flush()
            os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.out)
        return self.out

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def write_atomic(out: Path, write: Callable[[BinaryIO], object], fsync: bool = False) -> None:
    """``write(file)`` into an :class:`AtomicFile` for ``out``, then commit it.

    On any error the temporary file is removed and ``out`` is left as it was.
    """
    target = AtomicFile(out, fsync)
    try:
        write(target.file)
        target.commit()
    except BaseException:
        target.discard()
        raise


def write_text_atomic(out: Path, text: str) -> None:
    """``text`` (UTF-8) to ``out`` through :func:`write_atomic`."""
    write_atomic(out, lambda f: f.write(text.encode("utf-8")))
