"""Level 2 groups: which late Level 1 frames make one trefoil mosaic, and when a group is ready.

The cameras image on a fixed cadence (a polarized triplet M, Z, P and, every other cycle, a clear
image, within seconds across the three WFI), so a group is the set of frames of one cycle slot on
a fixed grid from a fixed epoch (``CycleGrid``), as punchbowl's ``phase_in_window`` places images
in their roll cycle. Within a slot: a polarized group has one ``PM PZ PP`` per camera (members at
most 80 s apart, the three cameras within seconds), complete at 9 frames; a clear group one
``CR`` per camera, complete at 3. Unlike the control segment in service (which drops incomplete
triplets and then waits forever when one member failed), every member has a state, and a group
is made from what exists once its wait is over and no missing member can still come.

A group belongs to the hour in which its slot ends, so its members lie in that hour or the one
before: a partition never waits for later data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

#: Members of a polarized group: (observatory, Level 1 code).
POLARIZED_MEMBERS: tuple[tuple[str, str], ...] = tuple((obs, code) for obs in "123" for code in ("PM", "PZ", "PP"))
#: Members of a clear group.
CLEAR_MEMBERS: tuple[tuple[str, str], ...] = tuple((obs, "CR") for obs in "123")
GROUP_MEMBERS = {"polarized": POLARIZED_MEMBERS, "clear": CLEAR_MEMBERS}


class MemberState(StrEnum):
    """What the catalog says of one member of a group."""

    PRESENT = "present"  # its late Level 1 product exists
    PENDING = "pending"  # on its way: Level 0 or Level 1 not made yet, or packets waiting for a replay
    FAILED = "failed"  # a level failed or refused to make it, with a recorded reason
    ABSENT = "absent"  # no telemetry for it, or its packets were skipped: it will not come


class Decision(StrEnum):
    """What to do with a group now."""

    COMPLETE = "complete"  # every member present: make it
    WAIT = "wait"  # members missing that may still come: wait
    INCOMPLETE = "incomplete"  # the wait is over and no missing member can come: make it, flagged
    EMPTY = "empty"  # no member present: nothing to make


@dataclass(frozen=True)
class CycleGrid:
    """The fixed grid of cycle slots groups are taken from.

    Attributes
    ----------
    epoch
        A slot boundary (naive UTC).
    cycle
        Length of a slot.

    """

    epoch: datetime
    cycle: timedelta

    def slot_of(self, when: datetime) -> int:
        """Return the index of the slot holding a time."""
        return math.floor((when - self.epoch) / self.cycle)

    def start(self, slot: int) -> datetime:
        """Return the start of a slot (inclusive)."""
        return self.epoch + slot * self.cycle

    def end(self, slot: int) -> datetime:
        """Return the end of a slot (exclusive)."""
        return self.epoch + (slot + 1) * self.cycle

    def slots_ending_in(self, start: datetime, end: datetime) -> range:
        """Return the slots whose end lies in ``(start, end]``: the groups of the window ``[start, end)``."""
        first = math.floor((start - self.epoch) / self.cycle)  # end(first) > start >= end(first - 1)
        last = math.floor((end - self.epoch) / self.cycle) - 1  # end(last) <= end < end(last + 1)
        return range(first, last + 1)


@dataclass
class Group:
    """One slot's members of one kind, and what the catalog says of each.

    Attributes
    ----------
    kind
        ``polarized`` or ``clear``.
    slot
        Index of the slot on the grid.
    frames
        The present members: (observatory, code) to the frame (any object; catalog rows in the pipeline).
    states
        Every member's state and reason.

    """

    kind: str
    slot: int
    frames: dict[tuple[str, str], object] = field(default_factory=dict)
    states: dict[tuple[str, str], tuple[MemberState, str]] = field(default_factory=dict)

    @property
    def members(self) -> tuple[tuple[str, str], ...]:
        """Every member the group has when complete."""
        return GROUP_MEMBERS[self.kind]

    @property
    def missing(self) -> dict[tuple[str, str], tuple[MemberState, str]]:
        """The members not present, with their state and reason."""
        return {member: state for member, state in self.states.items() if state[0] is not MemberState.PRESENT}


def decide(states: Mapping[tuple[str, str], MemberState], now: datetime, deadline: datetime) -> Decision:
    """Decide what to do with a group from its members' states.

    Parameters
    ----------
    states
        The state of every member of the group.
    now
        The time of the decision.
    deadline
        The end of the group's wait for missing members (its slot's end plus the configured wait).

    Returns
    -------
    Decision
        ``COMPLETE`` when every member is present; ``EMPTY`` when none is; before the deadline
        ``WAIT``; after it ``WAIT`` while a missing member is still pending, else ``INCOMPLETE``.

    """
    present = sum(state is MemberState.PRESENT for state in states.values())
    if present == 0:
        return Decision.EMPTY
    if present == len(states):
        return Decision.COMPLETE
    if now < deadline or any(state is MemberState.PENDING for state in states.values()):
        return Decision.WAIT
    return Decision.INCOMPLETE


def group_frames(
    frames: Iterable[object],
    grid: CycleGrid,
    kind: str,
    when: Callable[[object], datetime] = lambda frame: frame.date_obs,
    member: Callable[[object], tuple[str, str]] = lambda frame: (frame.observatory, frame.file_type),
) -> dict[int, dict[tuple[str, str], list[object]]]:
    """Sort frames into the slots of the grid by member.

    Parameters
    ----------
    frames
        Candidate frames (any objects; ``when`` and ``member`` read them).
    grid
        The slot grid.
    kind
        ``polarized`` or ``clear``: frames that are no member of that kind are left out.
    when, member
        A frame's time and its (observatory, code).

    Returns
    -------
    dict
        Slot to member to the frames found for it (more than one only for a duplicated acquisition).

    """
    members = set(GROUP_MEMBERS[kind])
    slots: dict[int, dict[tuple[str, str], list[object]]] = {}
    for frame in frames:
        key = member(frame)
        if key in members:
            slots.setdefault(grid.slot_of(when(frame)), {}).setdefault(key, []).append(frame)
    return slots
