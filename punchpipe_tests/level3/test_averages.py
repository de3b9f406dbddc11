"""Level 3 bins: 32-minute low-noise bins (membership, completeness, incomplete after the wait) and 6-hour VAM bins."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from punchpipe_assets.bins import bin_of, bin_starts
from punchpipe_assets.level3.averages import VELOCITY_BIN, LowNoiseAverager, VelocityBuilder
from punchpipe_assets.level3.settings import LowNoiseSettings, VelocitySettings
from punchpipe_assets.resources import ArchiveResource
from punchpipe_tests.level3.test_starfield import add_product

DAY = datetime(2025, 8, 1)


@pytest.fixture
def backend() -> str:
    """Run these tests on SQLite only (they need no PostgreSQL)."""
    return "sqlite"


def test_a_day_holds_exactly_45_bins_from_midnight():
    starts = bin_starts(DAY, DAY + timedelta(days=1))
    assert len(starts) == 45 and starts[0] == DAY and starts[-1] == DAY + timedelta(hours=23, minutes=28)
    assert bin_starts(DAY + timedelta(days=1), DAY + timedelta(days=2))[0] == DAY + timedelta(days=1)
    assert bin_of(DAY + timedelta(hours=12)) == DAY + timedelta(hours=11, minutes=44)
    assert bin_of(DAY + timedelta(hours=12, minutes=15, seconds=59)) == DAY + timedelta(hours=11, minutes=44)
    assert bin_of(DAY + timedelta(hours=12, minutes=16)) == DAY + timedelta(hours=12, minutes=16)


def test_bins_take_their_mosaics_complete_at_once_incomplete_after_the_wait_flagged(config, catalog):
    config.level3.low_noise = LowNoiseSettings(wait_hours=2)
    archive = ArchiveResource(root=str(config.archive_dir))
    first, second = DAY + timedelta(hours=11, minutes=44), DAY + timedelta(hours=12, minutes=16)
    with catalog.session() as session:
        full = [add_product(session, "CT", first + timedelta(minutes=8 * i, seconds=30)) for i in range(4)]
        part = [add_product(session, "CT", second + timedelta(minutes=m)) for m in (0, 31)]
        add_product(session, "PT", second + timedelta(minutes=1))  # polarized: the PAM's
        add_product(session, "CT", second + timedelta(minutes=32))  # the next bin
        averager = LowNoiseAverager(session, archive, config, "clear")
        assert [p.id for p in averager.candidates(first + timedelta(minutes=16))] == [p.id for p in full]
        assert [p.id for p in averager.candidates(second + timedelta(minutes=16))] == [p.id for p in part]
        # An hour after the second bin ends: the complete bin is made at once (it fails here: no files on
        # disk, past the decision), the incomplete one waits until two hours after its end.
        now = second + timedelta(minutes=32 + 60)
        outcomes = averager.process_window(first, second + timedelta(minutes=32), "2025-08-01", now)
        assert [(o.reference_time, o.status) for o in outcomes] == [
            (first + timedelta(minutes=16), "failed"),
            (second + timedelta(minutes=16), "waiting"),
        ]
        assert outcomes[0].flags == [] and [i["code"] for i in outcomes[0].inputs] == ["CT"] * 4
        assert outcomes[1].deadline == second + timedelta(minutes=32, hours=2)
        assert outcomes[1].reason == "2 of 4 inputs; waiting until 2025-08-01T14:48"
        # After the wait the incomplete bin is made from what exists, flagged.
        [late] = averager.process_window(second, second + timedelta(minutes=1), "2025-08-01", now + timedelta(hours=2))
        assert late.status == "failed" and late.flags == ["incomplete bin: 2 of 4 inputs"]
        # Polarized bins are complete at 8 PTM.
        polarized = LowNoiseAverager(session, archive, config, "polarized")
        [waiting] = polarized.process_window(second, second + timedelta(minutes=1), "2025-08-01", now)
        assert (waiting.code, waiting.status, waiting.reason[:12]) == ("PA", "waiting", "1 of 8 input")
        # A bin without an input makes nothing (and is not reported).
        assert averager.process_window(DAY, DAY + timedelta(hours=11), "2025-08-01", now) == []


def test_velocity_bins_take_the_ptm_of_six_hours_and_refuse_below_the_minimum(config, catalog):
    config.level3.velocity = VelocitySettings(min_inputs=3, delta_t=1)
    archive = ArchiveResource(root=str(config.archive_dir))
    start = DAY + timedelta(hours=12)
    with catalog.session() as session:
        inside = [add_product(session, "PT", start + timedelta(hours=h)) for h in (0, 2, 5.99)]
        add_product(session, "PT", start + VELOCITY_BIN)  # the next bin
        add_product(session, "CT", start + timedelta(hours=1))  # clear mosaics do not count
        builder = VelocityBuilder(session, archive, config)
        centre = start + VELOCITY_BIN / 2
        chosen, refusal = builder.choose(builder.candidates(centre), centre)
        assert refusal is None and [p.id for p in chosen] == [p.id for p in inside]
        config.level3.velocity = VelocitySettings(min_inputs=4, delta_t=1)
        outcome = VelocityBuilder(session, archive, config).build(centre, "2025-08-01-12:00")
        assert outcome.status == "refused"
        assert outcome.reason == "VAM 2025-08-01T12:00: 3 PTM in the 6-hour bin, the minimum is 4"
