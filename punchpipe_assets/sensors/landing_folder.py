"""What is in the landing folder: new, settling, grown and bad entries, every one accounted for."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from punchpipe_assets.names import catalog_name, display_name, is_valid_utf8, name_bytes, safe_name

TELEMETRY_SUFFIX = ".tlm"
PART_SUFFIX = ".part"
REREAD_STATES = ("ingested", "partial", "duplicate", "skipped")  # read again when the file grows


@dataclass(frozen=True)
class Registered:
    """What the catalog knows of a landing file name."""

    state: str
    size: int


@dataclass(frozen=True)
class BadEntry:
    r"""A landing entry that is not a readable downlink file, and what to do with it.

    ``name`` is the catalog name (undecodable bytes as ``\xNN``), ``path`` the entry itself;
    ``quarantine`` says whether it is moved away (else it stays and is tried again).
    """

    name: str
    path: Path
    reason: str
    quarantine: bool
    quarantine_name: str | None = None


@dataclass
class LandingSurvey:
    """One listing of the landing folder against the catalog."""

    new: list[Path] = field(default_factory=list)  # settled files never registered, oldest first
    grown: list[Path] = field(default_factory=list)  # registered files whose size changed since
    retry: list[Path] = field(default_factory=list)  # recorded unreadable: tried again after the others
    settling: list[tuple[str, float]] = field(default_factory=list)  # (name, age in seconds)
    writing: list[str] = field(default_factory=list)  # *.part files
    bad: list[BadEntry] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # not downlinks: left alone
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (name, state) present, not read again


def _bad_entry(entry: os.DirEntry, name: str) -> BadEntry | None:
    """Why an entry named like a downlink cannot be read as one, or None if it can be tried."""
    if not is_valid_utf8(entry.name):
        target = safe_name(entry.name, limit=200)
        reason = (
            f"name is not valid UTF-8 ({name_bytes(entry.name)!r}): quarantined as {target}; "
            "rename it to UTF-8 and deliver it again"
        )
        return BadEntry(name, Path(entry.path), reason, True, target)
    if entry.is_symlink() and not os.path.exists(entry.path):
        target = display_name(os.readlink(entry.path))
        return BadEntry(name, Path(entry.path), f"dangling symbolic link to {target}", False)
    if entry.is_dir():
        return BadEntry(name, Path(entry.path), "a directory, not a downlink file", True)
    if not entry.is_file():
        return BadEntry(name, Path(entry.path), "not a regular file (device, pipe or socket)", True)
    return None


def survey_landing(
    landing_dir: Path, registered: dict[str, Registered], now: float, settle_seconds: float
) -> LandingSurvey:
    """List the landing folder: what to register, re-read, wait for or report, and why.

    A file modified within ``settle_seconds`` (new, or registered and grown since) is settling;
    ``*.part`` files are being written. Entries that cannot be read as downlinks (undecodable
    names, directories, dangling links) are returned as bad entries with their reason. Files
    recorded ``unreadable`` are to be tried again (after the others, so they never hold new ones back).
    """
    survey = LandingSurvey()
    new: list[tuple[float, str, Path]] = []
    with os.scandir(landing_dir) as entries:
        for entry in entries:
            if entry.name.endswith(TELEMETRY_SUFFIX + PART_SUFFIX):
                survey.writing.append(display_name(entry.name))
                continue
            if not entry.name.endswith(TELEMETRY_SUFFIX):
                survey.other.append(display_name(entry.name))
                continue
            name = catalog_name(entry.name)
            known = registered.get(name)
            if known is not None and known.state not in REREAD_STATES + ("unreadable",):
                survey.ignored.append((name, known.state))
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished since the listing
            bad = _bad_entry(entry, name)
            if bad is not None:
                if bad.quarantine and now - stat.st_mtime < settle_seconds:
                    survey.settling.append((name, now - stat.st_mtime))
                else:
                    survey.bad.append(bad)
                continue
            try:
                stat = entry.stat() if entry.is_symlink() else stat  # a link: what it points to
            except OSError:
                continue
            if known is not None and known.state != "unreadable" and stat.st_size == known.size:
                continue
            # Not before the clock at the stat: a file made between the caller's clock and the listing is not young.
            age = max(now, time.time()) - stat.st_mtime
            if age < settle_seconds:
                survey.settling.append((name, age))
            elif known is not None and known.state != "unreadable":
                survey.grown.append(Path(entry.path))
            elif known is not None:
                survey.retry.append(Path(entry.path))
            else:
                new.append((stat.st_mtime, entry.name, Path(entry.path)))
    survey.new = [path for _, _, path in sorted(new)]
    survey.settling.sort()
    survey.retry.sort()
    return survey
