"""NFI PCA batches: settings, and batch and context selection with gaps and the ends of the data (no punchbowl)."""

from dataclasses import dataclass
from datetime import datetime, timedelta

import pydantic
import pytest

from punchpipe_assets.config import load_config
from punchpipe_assets.level2.nfi_pca import (
    NFI_CLEAR_CADENCE,
    BatchStatus,
    NfiPcaSettings,
    select_batches,
    split_batches,
)

WINDOW = datetime(2025, 8, 2, 0, 0)
SETTINGS = NfiPcaSettings()  # 12-hour windows, 45 + 45 context, 170 frames at least
LATER = datetime(2026, 1, 1)  # long after every deadline


@dataclass(frozen=True)
class Frame:
    date_obs: datetime


def cadence(start: datetime, end: datetime, skip: tuple[datetime, datetime] | None = None) -> list[Frame]:
    """Clear NFI frames every 8 minutes (at 3 min 32 s into the cycle) in ``[start, end)``, minus a gap."""
    frames, t = [], start + timedelta(minutes=3, seconds=32)
    while t < end:
        if not (skip and skip[0] <= t < skip[1]):
            frames.append(Frame(t))
        t += NFI_CLEAR_CADENCE
    return frames


def select(frames, now=LATER, settings=SETTINGS, window=WINDOW):
    end = window + timedelta(hours=settings.batch_hours)
    oldest = min((f.date_obs for f in frames), default=None)
    newest = max((f.date_obs for f in frames), default=None)
    return select_batches(frames, window, end, oldest, newest, now, settings)


def test_defaults_fit_the_mission_cadence_and_bad_settings_are_refused_in_words(tmp_path):
    assert timedelta(hours=SETTINGS.batch_hours) // NFI_CLEAR_CADENCE + 90 >= SETTINGS.min_frames
    assert SETTINGS.context_steps == 2
    with pytest.raises(pydantic.ValidationError, match="must divide 24"):
        NfiPcaSettings(batch_hours=5)
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 160"):
        NfiPcaSettings(min_frames=100)
    with pytest.raises(pydantic.ValidationError, match="no batch could ever be made"):
        NfiPcaSettings(batch_hours=1, max_context_hours=6)
    with pytest.raises(pydantic.ValidationError, match="wait_hours"):
        NfiPcaSettings(wait_hours=1)
    path = tmp_path / "bad.yaml"
    path.write_text("level2:\n  nfi_pca:\n    batch_size: 0\n")
    with pytest.raises(pydantic.ValidationError, match="batch_size"):
        load_config(path)


def test_a_window_in_steady_data_is_one_batch_with_context_on_both_sides():
    frames = cadence(WINDOW - timedelta(days=2), WINDOW + timedelta(days=2))
    [batch] = select(frames)
    assert batch.status is BatchStatus.READY and not batch.flags
    assert len(batch.frames) == 90 and len(batch.before) == 45 and len(batch.after) == 45
    assert all(WINDOW <= f.date_obs < WINDOW + timedelta(hours=12) for f in batch.frames)
    assert batch.before[-1].date_obs == batch.frames[0].date_obs - NFI_CLEAR_CADENCE
    assert batch.after[0].date_obs == batch.frames[-1].date_obs + NFI_CLEAR_CADENCE
    assert batch.context == sorted(batch.context, key=lambda f: f.date_obs)


def test_a_gap_splits_the_window_and_context_is_topped_up_across_it():
    gap = (WINDOW + timedelta(hours=5), WINDOW + timedelta(hours=7))
    frames = cadence(WINDOW - timedelta(days=2), WINDOW + timedelta(days=2), skip=gap)
    first, second = select(frames)
    assert first.frames[-1].date_obs < gap[0] <= gap[1] <= second.frames[0].date_obs
    assert len(first.frames) + len(second.frames) == 90 - 15
    for batch in (first, second):
        assert batch.status is BatchStatus.READY and not batch.flags
        assert len(batch.frames) + len(batch.context) == SETTINGS.min_frames
        assert len(batch.before) >= 45 and len(batch.after) >= 45
    # The first batch's context after it crosses the gap into the second batch's frames.
    assert set(second.frames) & set(first.after)


def test_batch_size_splits_a_long_window_into_near_equal_batches():
    frames = cadence(WINDOW, WINDOW + timedelta(hours=24))
    sizes = [len(b) for b in split_batches(frames, timedelta(hours=1), 70)]
    assert sizes == [60, 60, 60]
    gap = split_batches([Frame(WINDOW), Frame(WINDOW + timedelta(minutes=61))], timedelta(hours=1), 70)
    assert len(gap) == 2


def test_the_end_of_the_data_waits_then_makes_do_flagged():
    frames = cadence(WINDOW - timedelta(days=2), WINDOW + timedelta(hours=14))  # 2 h after the window only
    [waiting] = select(frames, now=WINDOW + timedelta(hours=14))
    assert waiting.status is BatchStatus.WAIT and "context frames after (end of the data)" in waiting.reason
    assert waiting.deadline == waiting.frames[-1].date_obs + timedelta(hours=SETTINGS.wait_hours)
    [made] = select(frames, now=waiting.deadline)
    assert made.status is BatchStatus.READY
    assert made.flags == ["made short of context: 15 context frames after (end of the data)"]
    assert len(made.frames) + len(made.context) >= SETTINGS.min_frames  # topped up before it


def test_the_start_of_the_data_waits_then_makes_do_flagged():
    frames = cadence(WINDOW - timedelta(hours=1), WINDOW + timedelta(days=2))
    [waiting] = select(frames, now=WINDOW + timedelta(hours=13))
    assert waiting.status is BatchStatus.WAIT and "context frames before (start of the data)" in waiting.reason
    [made] = select(frames)
    assert made.status is BatchStatus.READY and made.flags[0].startswith("made short of context: 8 context frames")
    assert len(made.before) == 8 and len(made.after) == SETTINGS.min_frames - 90 - 8


def test_a_hole_in_the_data_is_not_waited_for_and_too_few_frames_are_refused():
    # Data far on both sides (beyond the 24 h reach) but nothing near: complete, nothing more will come.
    frames = [
        *cadence(WINDOW - timedelta(days=5), WINDOW - timedelta(days=3)),
        *cadence(WINDOW, WINDOW + timedelta(hours=12)),
        *cadence(WINDOW + timedelta(days=3), WINDOW + timedelta(days=5)),
    ]
    [batch] = select(frames, now=WINDOW + timedelta(hours=13))
    assert batch.status is BatchStatus.REFUSED and "90 frames with context (90 to filter)" in batch.reason
    assert select([], now=LATER) == []
