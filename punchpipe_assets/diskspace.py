"""A full disk, reported as such: "no space left on device", with the folder and what to do.

SQLite says ``database or disk is full`` or, writing its WAL, ``disk I/O error``; Python's writes
say ``[Errno 28]``. ``process`` and ``backfill`` turn any of them (anywhere in an exception's
chain, or behind failed runs) into one message naming the full file systems. Nothing is lost: a
product is written to a staging file and renamed (``archive.write_atomically``), and catalogued in
the same transaction, so the next run after space is freed makes what is missing.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from punchpipe_assets.config import PipelineConfig

#: Below this many free bytes, a file system counts as full.
FULL_BELOW_BYTES = 16 * 1024 * 1024
#: What SQLite and the operating system say when a write finds no space.
FULL_MESSAGES = ("database or disk is full", "no space left on device", "disk quota exceeded")
#: What SQLite may say instead on a full disk (and for real I/O errors: checked against free space).
AMBIGUOUS_MESSAGES = ("disk i/o error",)
#: Exit status of ``process`` and ``backfill`` on a full disk (``EX_IOERR``).
DISK_FULL_EXIT_STATUS = 74


def watched_folders(config: PipelineConfig) -> list[Path]:
    """Return the folders the pipeline writes to: home (catalog), archive, Dagster's storage."""
    folders = [Path(config.home), Path(config.archive_dir)]
    if os.environ.get("DAGSTER_HOME"):
        folders.append(Path(os.environ["DAGSTER_HOME"]))
    return folders


def full_folders(config: PipelineConfig) -> list[tuple[Path, int]]:
    """Return the watched folders whose file system is full, with its free bytes."""
    full = []
    for folder in watched_folders(config):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        if free < FULL_BELOW_BYTES:
            full.append((folder, free))
    return full


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def from_full_disk(error: BaseException, config: PipelineConfig) -> bool:
    """Return whether an error (or one in its chain) comes from a full disk."""
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        message = str(link).lower()
        if any(text in message for text in FULL_MESSAGES):
            return True
        if any(text in message for text in AMBIGUOUS_MESSAGES) and full_folders(config):
            return True
    return False


def no_space_message(config: PipelineConfig) -> str:
    """Return the operator's message for a full disk: which folders, how much is free, what to do."""
    full = full_folders(config)
    if not full:
        full = [(f, shutil.disk_usage(f).free) for f in watched_folders(config) if f.exists()]
    where = "; ".join(f"{folder} ({free // 1024} KiB free)" for folder, free in full)
    return (
        f"no space left on device: {where}. Nothing half-written was kept; "
        "free space and run `punchpipe process` again to make what is missing."
    )
