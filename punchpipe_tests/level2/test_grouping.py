"""Level 2 grouping: cadence slots, and the decision for every pattern of missing members."""

from datetime import datetime, timedelta
from itertools import product
from types import SimpleNamespace

import pytest

from punchpipe_assets.cameras import CAMERAS
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.level2.grouping import (
    CLEAR_MEMBERS,
    POLARIZED_MEMBERS,
    CycleGrid,
    Decision,
    MemberState,
    decide,
    group_frames,
)
from punchpipe_assets.level2.mosaics import cycle_grid
from punchpipe_assets.simulate import acquisition_schedule

SLOT_END = datetime(2025, 8, 1, 12, 4)
DEADLINE = SLOT_END + timedelta(hours=48)
BEFORE, AFTER = DEADLINE - timedelta(seconds=1), DEADLINE


@pytest.mark.parametrize("members", [POLARIZED_MEMBERS, CLEAR_MEMBERS], ids=["polarized", "clear"])
def test_every_pattern_of_missing_members_decides_correctly_before_and_after_the_wait(members):
    """2^9 (2^3) patterns x (absent, failed) for missing members x before/after the wait; pending always waits."""
    checked = 0
    for pattern in product([True, False], repeat=len(members)):
        present = sum(pattern)
        for missing_state in (MemberState.ABSENT, MemberState.FAILED):
            states = {m: MemberState.PRESENT if p else missing_state for m, p in zip(members, pattern, strict=True)}
            before, after = decide(states, BEFORE, DEADLINE), decide(states, AFTER, DEADLINE)
            if present == len(members):
                assert before == after == Decision.COMPLETE
            elif present == 0:
                assert before == after == Decision.EMPTY
            else:
                assert (before, after) == (Decision.WAIT, Decision.INCOMPLETE), (pattern, missing_state)
            checked += 1
            # The same pattern with one missing member still on its way waits even after the wait.
            if 0 < present < len(members):
                first_missing = next(m for m, p in zip(members, pattern, strict=True) if not p)
                pending = {**states, first_missing: MemberState.PENDING}
                assert decide(pending, AFTER, DEADLINE) == Decision.WAIT
    assert checked == 2 * 2 ** len(members)


def test_cycle_grid_slots_belong_to_the_hour_they_end_in():
    grid = CycleGrid(datetime(2025, 3, 1) - timedelta(seconds=3), timedelta(seconds=240))
    hour = datetime(2025, 8, 1, 12)
    slots = grid.slots_ending_in(hour, hour + timedelta(hours=1))
    assert len(slots) == 15  # exactly 15 slots of 4 minutes end in every hour
    assert grid.end(slots[0]) == hour + timedelta(minutes=4) - timedelta(seconds=3)
    assert grid.start(slots[0]) < hour  # the first slot began in the hour before
    assert grid.end(slots[-1]) == hour + timedelta(hours=1) - timedelta(seconds=3)
    next_hour = grid.slots_ending_in(hour + timedelta(hours=1), hour + timedelta(hours=2))
    assert next_hour[0] == slots[-1] + 1  # every slot is in exactly one hour


def test_simulated_cadence_gives_nine_members_per_polarized_slot_and_three_per_clear():
    """With the default grid, every camera's triplet and clear image of a cycle fall in one slot."""
    grid = cycle_grid(PipelineConfig())
    start = datetime(2025, 8, 1, 12)
    frames = []
    for camera in CAMERAS[:3]:
        for when, code in acquisition_schedule(camera, start, start + timedelta(hours=1)):
            if code != "DK":  # DATE-OBS is the exposure's midpoint, 11.3 s after the packet time for WFI
                frames.append(
                    SimpleNamespace(observatory=camera.obs, file_type=code, date_obs=when + timedelta(seconds=11.3))
                )
    polarized = group_frames(frames, grid, "polarized")
    clear = group_frames(frames, grid, "clear")
    assert len(polarized) == 15 and all(len(members) == 9 for members in polarized.values())
    assert len(clear) == 8 and all(len(members) == 3 for members in clear.values())
    assert all(len(found) == 1 for members in polarized.values() for found in members.values())
