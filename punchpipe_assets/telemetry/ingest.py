"""Registering downlink files and their packets in the catalog."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import ColumnElement, insert, or_, select
from sqlalchemy.orm import Session

from punchpipe_assets.cameras import CAMERA_BY_SPACECRAFT_ID
from punchpipe_assets.resources.catalog import Packet, TelemetryFile
from punchpipe_assets.telemetry.packets import PacketSet, decode_packets, frame_packets

DUPLICATE_PREFIX = "duplicate:"


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
    """The hour a time falls in."""
    return when.replace(minute=0, second=0, microsecond=0)


def quarantine(path: Path, quarantine_dir: Path, reason: str) -> Path:
    """Move an unreadable downlink out of the landing folder, with a note of why."""
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    target = quarantine_dir / path.name
    counter = 1
    while target.exists():
        target = quarantine_dir / f"{path.stem}.{counter}{path.suffix}"
        counter += 1
    shutil.move(str(path), target)
    target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
    return target


def register_telemetry_file(
    session: Session, path: Path, packet_set: PacketSet, quarantine_dir: Path
) -> IngestResult | None:
    """Register one downlink file and its packets.

    Parameters
    ----------
    session
        A catalog session; the caller commits.
    path
        The file in the landing folder.
    packet_set
        The packet definitions.
    quarantine_dir
        Where an unreadable file is moved.

    Returns
    -------
    IngestResult or None
        None if the file is registered already (registration is idempotent).
    """
    if session.scalar(select(TelemetryFile.id).where(TelemetryFile.name == path.name)) is not None:
        return None
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    record = TelemetryFile(name=path.name, path=str(path), sha256=sha256, size=len(data), state="ingested")
    result = IngestResult(name=path.name, state="ingested")

    twin = session.scalars(
        select(TelemetryFile).where(TelemetryFile.sha256 == sha256, TelemetryFile.state != "quarantined")
    ).first()
    if twin is not None:
        record.state, record.reason, record.n_packets = "duplicate", f"identical to {twin.name}", twin.n_packets
        result.state, result.reason = record.state, record.reason
        session.add(record)
        return result

    framed = frame_packets(data, packet_set)
    rows: list[dict] = []
    try:
        for apid in sorted({p.apid for p in framed.packets}):
            definition = packet_set.by_apid[apid]
            group = [p for p in framed.packets if p.apid == apid]
            decoded = decode_packets(definition, [data[p.offset : p.offset + p.length] for p in group])
            for packet, scid, when in zip(
                group, decoded[f"{definition.name}_HDR_SCID"], decoded["timestamp"], strict=True
            ):
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
    except Exception as error:  # noqa: BLE001 - any decoding failure quarantines the file
        framed.packets, framed.damage_reason = [], f"packets could not be decoded: {error}"

    if not framed.packets:
        reason = framed.damage_reason or "empty file"
        moved = quarantine(path, quarantine_dir, reason)
        record.state, record.reason, record.path = "quarantined", reason, str(moved)
        record.damaged_offset, record.damaged_bytes = framed.damaged_offset, framed.damaged_bytes
        result.state, result.reason = record.state, reason
        session.add(record)
        return result

    if framed.damage_reason:
        record.state, record.reason = "partial", f"damaged tail skipped: {framed.damage_reason}"
        record.damaged_offset, record.damaged_bytes = framed.damaged_offset, framed.damaged_bytes
    record.n_packets = len(rows)
    session.add(record)
    session.flush()

    _mark_duplicates(session, rows)
    for row in rows:
        row["telemetry_file_id"] = record.id
        camera = CAMERA_BY_SPACECRAFT_ID.get(row["spacecraft_id"])
        if camera is None:
            row["state"], row["reason"] = "skipped", f"unknown spacecraft id 0x{row['spacecraft_id']:02x}"
        elif row["state"] == "pending":
            result.cameras.add(camera.obs)
        result.skipped_packets += row["state"] == "skipped"
    rows.sort(key=lambda row: row["index_in_file"])
    session.execute(insert(Packet), rows)
    result.state, result.reason, result.n_packets = record.state, record.reason, len(rows)
    return result


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
