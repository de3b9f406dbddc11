"""Reading a registered downlink again once it has grown: its new packets registered, its history kept."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from punchpipe_assets.resources.catalog import Packet, TelemetryFile
from punchpipe_assets.telemetry.ingest import IngestResult, decode_rows, insert_packets, record_state
from punchpipe_assets.telemetry.packets import PacketSet, frame_packets


def reexamine_telemetry_file(session: Session, path: Path, packet_set: PacketSet) -> IngestResult | None:
    """Read a registered downlink whose size changed and register the packets it gained.

    The packets registered before must still be where they were, byte for byte (a writer that
    paused and went on, a damaged tail completed); then every packet after them is registered
    (replays of packets already received skipped as usual) and the file's state and reason are
    those of its new content, the earlier ones kept in its history. A file whose registered
    packets changed is not read again: its reason says so (deliver it under a new name).

    Returns
    -------
    IngestResult or None
        What changed, or None if the file is not registered, vanished, or its content is the same.

    """
    record = session.scalars(select(TelemetryFile).where(TelemetryFile.name == path.name)).first()
    if record is None:
        return None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        return _changed(session, record, record.size, f"grown but cannot be read: {error.strerror or error}")
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 == record.sha256:
        return None
    framed = frame_packets(data, packet_set)
    at = {packet.offset: packet for packet in framed.packets}
    registered = session.execute(
        select(Packet.index_in_file, Packet.byte_offset, Packet.length, Packet.digest).where(
            Packet.telemetry_file_id == record.id
        )
    ).all()
    moved = [
        index
        for index, offset, length, digest in registered
        if offset not in at or at[offset].index != index or (at[offset].length, at[offset].digest) != (length, digest)
    ]
    if moved:
        reason = (
            f"changed after registration ({len(moved)} registered packets differ): not read again; "
            "deliver changed downlinks under a new name"
        )
        return _changed(session, record, len(data), reason)
    known = {offset for _, offset, _, _ in registered}
    fresh = [packet for packet in framed.packets if packet.offset not in known]
    try:
        rows = decode_rows(data, fresh, packet_set)
    except Exception as error:  # noqa: BLE001 - a packet that does not decode ends the readable part
        return _changed(session, record, len(data), f"grown, but new packets could not be decoded: {error}")
    record.sha256, record.size, record.n_packets = sha256, len(data), len(registered) + len(rows)
    record.damaged_offset, record.damaged_bytes = framed.damaged_offset, framed.damaged_bytes
    if framed.damage_reason:
        record.state, record.reason = "partial", f"damaged tail skipped: {framed.damage_reason}"
    else:
        record.state, record.reason = "ingested", None
    result = IngestResult(name=record.name, state=record.state)
    insert_packets(session, record, rows, result)
    result.n_packets = len(rows)
    return result


def _changed(session: Session, record: TelemetryFile, size: int, reason: str) -> IngestResult | None:
    """Record that a registered file changed in a way that is not read (once per size and reason)."""
    if record.reason == reason and record.size == size:
        return None
    record.reason, record.size = reason, size
    record_state(session, record)
    return IngestResult(name=record.name, state=record.state, reason=reason)
