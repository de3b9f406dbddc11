"""The packets a Level 0 image is formed from: read back, put in order, and found nearby.

``PacketReader`` reads packet bytes back from the catalogued telemetry files,
``_order_image_packets`` orders an image's segments and counts the missing ones, and ``_nearest``
finds the engineering packets around an acquisition.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from punchpipe_assets.resources.catalog import Packet
from punchpipe_assets.telemetry.ingest import not_duplicate
from punchpipe_assets.telemetry.packets import SEQ_FLAG_FIRST, SEQ_FLAG_LAST, SEQ_FLAG_UNSEGMENTED

SEQ_MODULUS = 16384


class PacketReader:
    """Reads packet bytes back from telemetry files, keeping each file open once.

    ``landing_dir``: the root the catalogued telemetry paths are relative to.
    """

    def __init__(self, landing_dir: Path) -> None:
        self.landing_dir = Path(landing_dir)
        self._handles: dict[str, object] = {}

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Read the bytes of one packet of the (catalogued, landing-relative) telemetry file ``path``."""
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = open(self.landing_dir / path, "rb")  # noqa: SIM115 - closed in close()
        handle.seek(offset)
        return handle.read(length)

    def close(self) -> None:
        """Close every file."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def _order_image_packets(packets: list[Packet]) -> tuple[list[Packet], list[Packet], int]:
    """Order an image's packets, keep the newest copy of each segment, count missing segments.

    Returns
    -------
    tuple
        (ordered packets, superseded packets, number of missing segments)

    """
    by_count: dict[int, list[Packet]] = defaultdict(list)
    for packet in packets:
        by_count[packet.seq_count].append(packet)
    chosen = {count: max(group, key=lambda p: p.id) for count, group in by_count.items()}
    superseded = [p for count, group in by_count.items() for p in group if p is not chosen[count]]
    if len(chosen) == 1 and next(iter(chosen.values())).seq_flag == SEQ_FLAG_UNSEGMENTED:
        return list(chosen.values()), superseded, 0
    firsts = [p for p in chosen.values() if p.seq_flag == SEQ_FLAG_FIRST]
    lasts = [p for p in chosen.values() if p.seq_flag == SEQ_FLAG_LAST]
    origin = firsts[0].seq_count if firsts else min(chosen)
    ordered = sorted(chosen.values(), key=lambda p: (p.seq_count - origin) % SEQ_MODULUS)
    if firsts and lasts:
        expected = (lasts[0].seq_count - origin) % SEQ_MODULUS + 1
        missing = max(expected - len(ordered), 0)
    else:
        missing = max(1, len(ordered) // 8)  # unknown length: report at least the lost end segments
        missing += 0 if firsts else 1
    return ordered, superseded, missing


def _nearest(
    session: Session, kind: str, spacecraft_id: int, when: datetime, window: timedelta, before: bool
) -> Packet | None:
    """Find the engineering packet of a kind nearest before (or after) a time within a window."""
    query = select(Packet).where(Packet.kind == kind, Packet.spacecraft_id == spacecraft_id, not_duplicate())
    if before:
        query = query.where(Packet.timestamp <= when, Packet.timestamp >= when - window).order_by(
            Packet.timestamp.desc()
        )
    else:
        query = query.where(Packet.timestamp >= when, Packet.timestamp <= when + window).order_by(
            Packet.timestamp.asc()
        )
    return session.scalars(query.order_by(Packet.id.desc()).limit(1)).first()
