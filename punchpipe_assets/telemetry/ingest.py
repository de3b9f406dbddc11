"""Registering downlink files and their packets in the catalog."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import ColumnElement, insert, or_, select
from sqlalchemy.orm import Session

from punchpipe_assets.cameras import CAMERA_BY_SPACECRAFT_ID
from punchpipe_assets.resources.catalog import Packet, TelemetryFile, TelemetryFileState
from punchpipe_assets.telemetry.packets import FramedPacket, PacketSet, decode_packets, frame_packets

DUPLICATE_PREFIX = "duplicate:"
UNKNOWN_SPACECRAFT = "unknown spacecraft id"
RETRIED_STATES = ("unreadable",)  # files left in the landing folder and tried again at every scan


@dataclass
class IngestResult:
    """What registering one telemetry file did."""

    name: str
    state: str
    reason: str | None = None
    n_packets: int = 0
    skipped_packets: int = 0
    cameras: set[str] = field(default_factory=set)  # observatories with new packets


def hour_of(when: datetime) -> datetime:
    """Return the hour a time falls in."""
    return when.replace(minute=0, second=0, microsecond=0)


def quarantine(path: Path, quarantine_dir: Path, reason: str, name: str | None = None) -> Path:
    """Move an unreadable downlink (file or any other entry) out of the landing folder, with a note of why.

    ``name`` is the name to give it there (default: its own).
    """
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    name = name or path.name
    target = quarantine_dir / name
    stem, dot, suffix = name.rpartition(".")
    stem, suffix = (stem, dot + suffix) if dot else (name, "")
    counter = 1
    while target.exists() or target.is_symlink():
        target = quarantine_dir / f"{stem}.{counter}{suffix}"
        counter += 1
    shutil.move(str(path), target)
    target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
    return target


def record_state(session: Session, record: TelemetryFile) -> None:
    """Add the file's current state to its history (flushes to give a new record its id)."""
    session.add(record)
    session.flush()
    session.add(
        TelemetryFileState(
            telemetry_file_id=record.id,
            state=record.state,
            reason=record.reason,
            size=record.size or 0,
            n_packets=record.n_packets or 0,
        )
    )


def record_unreadable(session: Session, name: str, reason: str) -> IngestResult | None:
    """Record a landing entry that cannot be read now (it stays and is tried again at every scan).

    Returns None if it is recorded so already (same reason).
    """
    record = session.scalars(select(TelemetryFile).where(TelemetryFile.name == name)).first()
    if record is not None and record.state not in RETRIED_STATES:
        return None
    if record is not None and record.reason == reason:
        return None
    record = record or TelemetryFile(name=name, path=name, sha256="", size=0, n_packets=0)
    record.state, record.reason = "unreadable", reason
    record_state(session, record)
    return IngestResult(name=name, state="unreadable", reason=reason)


def record_quarantined(
    session: Session, path: Path, name: str, quarantine_dir: Path, reason: str, target_name: str | None = None
) -> IngestResult:
    """Move a landing entry that is not a downlink to quarantine and record it under ``name``."""
    record = session.scalars(select(TelemetryFile).where(TelemetryFile.name == name)).first()
    record = record or TelemetryFile(name=name, path=name, sha256="", size=0, n_packets=0)
    if path.is_file() and not path.is_symlink():
        try:
            data = path.read_bytes()
            record.sha256, record.size = hashlib.sha256(data).hexdigest(), len(data)
        except OSError:
            pass
    moved = quarantine(path, quarantine_dir, reason, target_name)
    record.state, record.reason, record.path = "quarantined", reason, moved.name
    record_state(session, record)
    return IngestResult(name=name, state="quarantined", reason=reason)


def decode_rows(data: bytes, packets: list[FramedPacket], packet_set: PacketSet) -> list[dict]:
    """Catalog rows of framed packets (decoded headers); raises if a packet does not decode."""
    rows: list[dict] = []
    for apid in sorted({p.apid for p in packets}):
        definition = packet_set.by_apid[apid]
        group = [p for p in packets if p.apid == apid]
        decoded = decode_packets(definition, [data[p.offset : p.offset + p.length] for p in group])
        for packet, scid, when in zip(group, decoded[f"{definition.name}_HDR_SCID"], decoded["timestamp"], strict=True):
            rows.append(
                {
                    "index_in_file": packet.index,
                    "byte_offset": packet.offset,
                    "length": packet.length,
                    "apid": apid,
                    "kind": definition.kind,
                    "spacecraft_id": int(scid),
                    "timestamp": when,
                    "seq_flag": packet.seq_flag,
                    "seq_count": packet.seq_count,
                    "digest": packet.digest,
                    "state": "pending",
                }
            )
    return rows


def register_telemetry_file(
    session: Session, path: Path, packet_set: PacketSet, quarantine_dir: Path
) -> IngestResult | None:
    """Register one downlink file and its packets.

    A file that cannot be read now (permissions, I/O error) is recorded ``unreadable`` with the
    reason and tried again at the next call; one that vanished is left alone.

    Parameters
    ----------
    session
        A catalog session; the caller commits.
    path
        The file in the landing folder (its name valid UTF-8).
    packet_set
        The packet definitions.
    quarantine_dir
        Where an unreadable file is moved.

    Returns
    -------
    IngestResult or None
        None if the file is registered already (registration is idempotent) or vanished.

    """
    record = session.scalars(select(TelemetryFile).where(TelemetryFile.name == path.name)).first()
    if record is not None and record.state not in RETRIED_STATES:
        return None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        return record_unreadable(session, path.name, f"cannot be read: {error.strerror or error}")
    sha256 = hashlib.sha256(data).hexdigest()
    # Catalogued paths are relative to their root: the landing folder (quarantine folder once quarantined).
    record = record or TelemetryFile(name=path.name, path=path.name, sha256=sha256, size=len(data), state="ingested")
    record.path, record.sha256, record.size, record.state, record.reason = (
        path.name,
        sha256,
        len(data),
        "ingested",
        None,
    )
    result = IngestResult(name=path.name, state="ingested")

    twin = session.scalars(
        select(TelemetryFile).where(
            TelemetryFile.sha256 == sha256,
            TelemetryFile.state.not_in(("quarantined", *RETRIED_STATES)),
            TelemetryFile.name != path.name,
        )
    ).first()
    if twin is not None:
        record.state, record.reason, record.n_packets = "duplicate", f"identical to {twin.name}", twin.n_packets
        result.state, result.reason = record.state, record.reason
        record_state(session, record)
        return result

    framed = frame_packets(data, packet_set)
    try:
        rows = decode_rows(data, framed.packets, packet_set)
    except Exception as error:  # noqa: BLE001 - any decoding failure quarantines the file
        rows, framed.packets, framed.damage_reason = [], [], f"packets could not be decoded: {error}"

    if not framed.packets:
        reason = framed.damage_reason or "empty file"
        record.damaged_offset, record.damaged_bytes = framed.damaged_offset, framed.damaged_bytes
        session.add(record)
        return record_quarantined(session, path, path.name, quarantine_dir, reason)

    if framed.damage_reason:
        record.state, record.reason = "partial", f"damaged tail skipped: {framed.damage_reason}"
        record.damaged_offset, record.damaged_bytes = framed.damaged_offset, framed.damaged_bytes
    record.n_packets = len(rows)
    session.add(record)
    session.flush()
    insert_packets(session, record, rows, result)
    return result


def insert_packets(session: Session, record: TelemetryFile, rows: list[dict], result: IngestResult) -> None:
    """Insert a file's new packet rows (replays and unknown spacecraft skipped) and state why.

    Sets the record's state ``skipped`` when every packet of the file is skipped, adds the reason
    (every packet skipped, or some of an unknown spacecraft) and records the state in the history.
    """
    _mark_duplicates(session, rows)
    for row in rows:
        row["telemetry_file_id"] = record.id
        camera = CAMERA_BY_SPACECRAFT_ID.get(row["spacecraft_id"])
        if camera is None:
            row["state"], row["reason"] = "skipped", f"{UNKNOWN_SPACECRAFT} 0x{row['spacecraft_id']:02x}"
        elif row["state"] == "pending":
            result.cameras.add(camera.obs)
        result.skipped_packets += row["state"] == "skipped"
    rows.sort(key=lambda row: row["index_in_file"])
    if rows:
        session.execute(insert(Packet), rows)
    states = session.execute(select(Packet.state, Packet.reason).where(Packet.telemetry_file_id == record.id)).all()
    summary = skip_summary(states)
    if summary is not None:
        if all(state == "skipped" for state, _ in states):
            record.state = "skipped"
        record.reason = f"{record.reason}; {summary}" if record.reason else summary
    record_state(session, record)
    result.state, result.reason, result.n_packets = record.state, record.reason, len(rows)


def skip_summary(states: list[tuple[str, str | None]]) -> str | None:
    """Why a file's packets were skipped, if all were, or some came from an unknown spacecraft."""
    skipped = [reason or "" for state, reason in states if state == "skipped"]
    causes = Counter(
        "replayed copies of packets already received" if reason.startswith(DUPLICATE_PREFIX) else reason
        for reason in skipped
    )
    detail = ", ".join(f"{count} {cause}" for cause, count in sorted(causes.items()))
    if skipped and len(skipped) == len(states):
        return f"every packet skipped ({detail}): nothing for Level 0"
    if any(cause.startswith(UNKNOWN_SPACECRAFT) for cause in causes):
        return f"{len(skipped)} of {len(states)} packets skipped ({detail})"
    return None


def not_duplicate() -> ColumnElement[bool]:
    """Filter for packets that are not copies of an earlier packet."""
    return or_(Packet.reason.is_(None), Packet.reason.not_like(f"{DUPLICATE_PREFIX}%"))


def _mark_duplicates(session: Session, rows: list[dict]) -> None:
    """Mark packets already received (replays, duplicates within the file) as skipped."""
    first_seen: dict[str, str] = {}
    digests = list({row["digest"] for row in rows})
    for start in range(0, len(digests), 500):
        chunk = digests[start : start + 500]
        query = (
            select(Packet.digest, Packet.id, TelemetryFile.name)
            .join(TelemetryFile, Packet.telemetry_file_id == TelemetryFile.id)
            .where(Packet.digest.in_(chunk), not_duplicate())
        )
        for digest, packet_id, name in session.execute(query):
            first_seen.setdefault(digest, f"packet {packet_id} of {name}")
    for row in sorted(rows, key=lambda row: row["index_in_file"]):
        earlier = first_seen.get(row["digest"])
        if earlier is not None:
            row["state"], row["reason"] = "skipped", f"{DUPLICATE_PREFIX} replayed copy of {earlier}"
        else:
            first_seen[row["digest"]] = f"packet #{row['index_in_file']} of this file"
