"""The catalog's side of grouping: the groups of a window, each member's state, and the decision.

A missing member is looked for down the chain of the camera that should have made it: its early
Level 1 frame (late Level 1 failed or refused with a reason, or not made yet), its Level 0 frame
(early Level 1 failed, or not made yet), image packets of the camera in the slot (waiting for a
replay, or skipped with a reason), or nothing at all (no telemetry: it will not come).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from punchpipe_assets.cameras import CAMERA_BY_OBS
from punchpipe_assets.level2.grouping import (
    GROUP_MEMBERS,
    CycleGrid,
    Decision,
    Group,
    MemberState,
    decide,
    group_frames,
)
from punchpipe_assets.resources.catalog import Packet, ProductFailure, ProductFile

#: Image packets are stamped with the acquisition start; DATE-OBS (the exposure's midpoint) is later.
PACKET_LEAD = timedelta(seconds=30)


@dataclass
class PlannedGroup:
    """A group of a window with its decision and the end of its wait."""

    group: Group
    decision: Decision
    deadline: datetime


def _rows(session: Session, level: str, codes: Sequence[str], start: datetime, end: datetime) -> list[ProductFile]:
    return list(
        session.scalars(
            select(ProductFile)
            .where(
                ProductFile.level == level,
                ProductFile.observatory.in_(("1", "2", "3")),
                ProductFile.file_type.in_(codes),
                ProductFile.state == "created",
                ProductFile.date_obs >= start,
                ProductFile.date_obs < end,
            )
            .order_by(ProductFile.date_obs, ProductFile.id)
        )
    )


def _failures(session: Session, inputs: Sequence[ProductFile]) -> dict[tuple[int, str], ProductFailure]:
    if not inputs:
        return {}
    rows = session.scalars(select(ProductFailure).where(ProductFailure.input_id.in_([p.id for p in inputs])))
    return {(row.input_id, row.product_code): row for row in rows}


def plan_groups(
    session: Session,
    grid: CycleGrid,
    kind: str,
    start: datetime,
    end: datetime,
    now: datetime,
    wait: timedelta,
    quick: bool = False,
) -> list[PlannedGroup]:
    """Plan the groups of the slots ending in ``[start, end)``, each with its members' states and a decision.

    Parameters
    ----------
    session
        Catalog session.
    grid
        The cycle slots.
    kind
        ``polarized`` or ``clear``.
    start, end
        The partition's window (naive UTC).
    now
        The time of the decision.
    wait
        How long after its slot's end an incomplete group waits.
    quick
        Groups of quick Level 1 (``QR``, for QuickPUNCH) instead of late Level 1 (``CR``); clear only.

    Returns
    -------
    list[PlannedGroup]
        Every slot with at least one member present or on its way, by slot.

    """
    slots = grid.slots_ending_in(start, end)
    if not slots:
        return []
    lo, hi = grid.start(slots[0]), grid.end(slots[-1])
    members = GROUP_MEMBERS[kind]
    codes = sorted({code for _, code in members})
    product_codes = ["QR"] if quick else codes

    def member_of(frame: ProductFile) -> tuple[str, str]:
        return frame.observatory, ("CR" if frame.file_type == "QR" else frame.file_type)

    finals = group_frames(_rows(session, "1", product_codes, lo, hi), grid, kind, member=member_of)
    early = group_frames(
        _rows(session, "1", ["X" + code[1] for code in codes], lo, hi),
        grid,
        kind,
        member=lambda f: (f.observatory, ("CR" if f.file_type == "XR" else "P" + f.file_type[1])),
    )
    level0 = group_frames(_rows(session, "0", codes, lo, hi), grid, kind)
    failures = _failures(
        session,
        [f for by_member in (*early.values(), *level0.values()) for frames in by_member.values() for f in frames],
    )
    packets: dict[tuple[int, str], list[Packet]] = {}
    for packet in session.scalars(
        select(Packet).where(
            Packet.kind == "image", Packet.timestamp >= lo - PACKET_LEAD, Packet.timestamp < hi, Packet.state != "used"
        )
    ):
        camera = next((c for c in CAMERA_BY_OBS.values() if c.spacecraft_id == packet.spacecraft_id), None)
        if camera is not None:
            packets.setdefault((grid.slot_of(packet.timestamp + PACKET_LEAD / 2), camera.obs), []).append(packet)

    planned = []
    for slot in slots:
        group = Group(kind, slot)
        for member in members:
            obs, code = member
            found = finals.get(slot, {}).get(member)
            if found:
                group.frames[member] = max(found, key=lambda f: f.id)
                group.states[member] = (MemberState.PRESENT, "")
                continue
            final_code = "QR" if quick else code
            state = _missing_state(
                early.get(slot, {}).get(member, []),
                level0.get(slot, {}).get(member, []),
                packets.get((slot, obs), []),
                failures,
                final_code,
                "X" + code[1],
            )
            group.states[member] = state
        if all(state is MemberState.ABSENT for state, _ in group.states.values()):
            continue
        deadline = grid.end(slot) + wait
        decision = decide({m: s for m, (s, _) in group.states.items()}, now, deadline)
        planned.append(PlannedGroup(group, decision, deadline))
    return planned


def _missing_state(
    early: list[ProductFile],
    level0: list[ProductFile],
    packets: list[Packet],
    failures: dict[tuple[int, str], ProductFailure],
    final_code: str,
    early_code: str,
) -> tuple[MemberState, str]:
    """Infer the state of a missing member from what its camera made of the slot."""
    for frame in early:
        failure = failures.get((frame.id, final_code))
        if failure is not None:
            return MemberState.FAILED, f"{final_code} not made from {frame.path.rsplit('/', 1)[-1]}: {failure.reason}"
    if early:
        return MemberState.PENDING, f"early Level 1 made, {final_code} not yet"
    for frame in level0:
        failure = failures.get((frame.id, early_code))
        if failure is not None:
            return MemberState.FAILED, f"{early_code} not made from {frame.path.rsplit('/', 1)[-1]}: {failure.reason}"
    if level0:
        return MemberState.PENDING, "Level 0 made, Level 1 not yet"
    pending = [p for p in packets if p.state == "pending"]
    if pending:
        return MemberState.PENDING, f"{len(pending)} image packets of the slot not formed yet (waiting for a replay?)"
    if packets:
        reasons = sorted({p.reason or "skipped" for p in packets})
        return MemberState.ABSENT, f"image packets skipped: {'; '.join(reasons)[:300]}"
    return MemberState.ABSENT, "no telemetry for it"
