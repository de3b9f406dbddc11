"""NFI PCA batches: which early clear NFI frames (``XR4``) one ``level2_pca_core_flow`` call filters, with context.

punchbowl's ``level2_pca_core_flow`` (``level2/nfi_pca.py:pca_filter``) fits 100 PCA components in 8
strided rounds, each on the frames whose roll position is not 0, 1 or 7 modulo 8: about 5/8 of the
frames it loads, so a call needs at least 160 frames (``PUNCHBOWL_PCA_MIN_FRAMES``) or scikit-learn
refuses the fit. The control segment in service (``auto/flows/level2.py:level2_PCA_query_ready_files``)
takes up to ``batch_size`` unfiltered ``XR4`` (newest first) and tops them up with the already
filtered frames nearest their centre; it has no notion of gaps or of the ends of the data.

Here batches lie on a fixed grid of windows (``batch_hours`` from the mission epoch's midnight, one
Dagster partition each). The frames of a window are split at gaps longer than ``max_gap_minutes``
and into at most ``batch_size`` frames. Each batch takes as context (punchbowl fits on them but
makes no ``CNN`` of them) the ``context_before`` frames just before its first frame and the
``context_after`` just after its last, then, if it still has fewer than ``min_frames``, the
nearest others; all within ``max_context_hours`` of the batch (context crosses gaps: the stray
light repeats with the orbit). A side short of frames is complete once the data reach past
``max_context_hours`` on that side; until then the batch waits, and ``wait_hours`` after its last
frame it is made with what exists, flagged. Too few frames with everything in reach: refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Fewest frames one punchbowl 0.0.25 PCA call can fit: 100 components (``pca_filter``'s
#: ``n_components``) on the 5/8 of the frames each of its 8 strided rounds fits on.
PUNCHBOWL_PCA_MIN_FRAMES = 160
#: One clear NFI frame per 8-minute roll cycle (punchbowl's ``phase_in_window``: phase 4 is ``CR``).
NFI_CLEAR_CADENCE = timedelta(minutes=8)


class NfiPcaSettings(BaseModel):
    """Batches of the NFI PCA background (punchbowl's ``level2_pca_core_flow``) and its arguments.

    Defaults fit the mission cadence (one clear NFI frame every 8 minutes, 7.5 an hour): a 12-hour
    batch (90 frames) with 45 context frames a side (6 hours) is 180 frames: punchbowl's floor of 160
    leaves no room for the outliers it drops before fitting (160 synthetic frames left 98 < 100 to
    fit, a scikit-learn error), so ``min_frames`` defaults to 180. A flight-size call holds about
    180 x 16 MB per copy of the stack.
    """

    model_config = ConfigDict(extra="forbid")

    batch_hours: int = Field(12, gt=0, description="Window of frames one batch partition filters; divides 24.")
    batch_size: int = Field(120, ge=1, description="Most frames filtered in one call (a window holding more splits).")
    context_before: int = Field(45, ge=0, description="Context frames taken just before a batch's first frame.")
    context_after: int = Field(45, ge=0, description="Context frames taken just after a batch's last frame.")
    max_context_hours: float = Field(24.0, gt=0, description="Context frames lie at most this far from the batch.")
    max_gap_minutes: float = Field(60.0, gt=0, description="A longer gap between frames of a window splits a batch.")
    min_frames: int = Field(
        180, ge=PUNCHBOWL_PCA_MIN_FRAMES, description="Fewest frames (batch and context) of a call; at least 160."
    )
    wait_hours: float = Field(12.0, ge=0, description="How long after its last frame a batch waits for context.")
    n_workers: int = Field(2, ge=1, description="Worker processes of level2_pca_core_flow.")
    n_loaders: int = Field(1, ge=1, description="Loader processes of level2_pca_core_flow.")

    @field_validator("batch_hours")
    @classmethod
    def _divides_day(cls, value: int) -> int:
        if 24 % value:
            raise ValueError("batch_hours must divide 24 (a fixed grid of batch windows from midnight)")
        return value

    @model_validator(mode="after")
    def _cadence_fills_a_call(self) -> NfiPcaSettings:
        reach = timedelta(hours=self.batch_hours + 2 * self.max_context_hours) // NFI_CLEAR_CADENCE
        if reach < self.min_frames:
            raise ValueError(
                f"batch_hours + 2 x max_context_hours hold {reach} clear NFI frames at the 8-minute cadence, "
                f"fewer than min_frames ({self.min_frames}): no batch could ever be made"
            )
        if timedelta(hours=self.wait_hours) < self.context_after * NFI_CLEAR_CADENCE:
            raise ValueError(
                f"wait_hours ({self.wait_hours:g}) is shorter than acquiring context_after ({self.context_after}) "
                "frames at the 8-minute cadence: every batch would be made short of context"
            )
        if timedelta(hours=self.max_context_hours) < max(self.context_before, self.context_after) * NFI_CLEAR_CADENCE:
            raise ValueError("max_context_hours is shorter than context_before/context_after frames at the cadence")
        return self

    @property
    def context_steps(self) -> int:
        """Batch windows the context reaches into on each side (for the partition mapping)."""
        return math.ceil(self.max_context_hours / self.batch_hours)


class Timed(Protocol):
    """Anything with an observation time (a catalog row, a test frame)."""

    date_obs: datetime


class BatchStatus(StrEnum):
    """What to do with a batch now."""

    READY = "ready"  # enough frames, context complete (or made do with after the wait, flagged)
    WAIT = "wait"  # context may still come: wait until the deadline
    REFUSED = "refused"  # too few frames with context and nothing more will come


@dataclass
class PcaBatch[T]:
    """One PCA call: the frames it filters (one ``CNN`` each) and its context frames."""

    frames: list[T]
    before: list[T]
    after: list[T]
    status: BatchStatus
    deadline: datetime
    flags: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def context(self) -> list[T]:
        """Context frames of both sides, by time."""
        return [*self.before, *self.after]


def split_batches[F: Timed](frames: Sequence[F], max_gap: timedelta, batch_size: int) -> list[list[F]]:
    """Split frames (by time) at gaps longer than ``max_gap``, then into near-equal runs of at most ``batch_size``."""
    runs: list[list[F]] = []
    for frame in frames:
        if runs and frame.date_obs - runs[-1][-1].date_obs <= max_gap:
            runs[-1].append(frame)
        else:
            runs.append([frame])
    batches = []
    for run in runs:
        parts = math.ceil(len(run) / batch_size)
        bounds = [round(i * len(run) / parts) for i in range(parts + 1)]
        batches.extend(run[a:b] for a, b in zip(bounds, bounds[1:], strict=False))
    return batches


def select_batches[F: Timed](
    frames: Sequence[F],
    window_start: datetime,
    window_end: datetime,
    oldest: datetime | None,
    newest: datetime | None,
    now: datetime,
    settings: NfiPcaSettings,
) -> list[PcaBatch[F]]:
    """Return the batches of the window ``[window_start, window_end)`` with their context and what to do with them.

    Parameters
    ----------
    frames
        Every known clear NFI frame within ``max_context_hours`` of the window (others are ignored).
    window_start, window_end
        The batch window (a partition): its frames are filtered, the others only context.
    oldest, newest
        DATE-OBS of the oldest and newest clear NFI frame known at all (None: none): where the data end.
    now
        The time each batch's deadline (its last frame + ``wait_hours``) is compared with.
    settings
        The batch settings.

    """
    ordered = sorted(frames, key=lambda f: f.date_obs)
    reach = timedelta(hours=settings.max_context_hours)
    in_window = [f for f in ordered if window_start <= f.date_obs < window_end]
    batches = []
    for frames_of_batch in split_batches(in_window, timedelta(minutes=settings.max_gap_minutes), settings.batch_size):
        first, last = frames_of_batch[0].date_obs, frames_of_batch[-1].date_obs
        earlier = [f for f in ordered if first - reach <= f.date_obs < first][::-1]  # nearest first
        later = [f for f in ordered if last < f.date_obs <= last + reach]
        n_before, n_after = min(settings.context_before, len(earlier)), min(settings.context_after, len(later))
        # Top up to min_frames with the nearest frames left on either side.
        while len(frames_of_batch) + n_before + n_after < settings.min_frames and (
            n_before < len(earlier) or n_after < len(later)
        ):
            gap_before = first - earlier[n_before].date_obs if n_before < len(earlier) else None
            gap_after = later[n_after].date_obs - last if n_after < len(later) else None
            if gap_after is None or (gap_before is not None and gap_before <= gap_after):
                n_before += 1
            else:
                n_after += 1
        count = len(frames_of_batch) + n_before + n_after
        short = count < settings.min_frames
        missing = []
        if (n_before < settings.context_before or short) and not (oldest is not None and oldest < first - reach):
            missing.append(f"{n_before} context frames before (start of the data)")
        if (n_after < settings.context_after or short) and not (newest is not None and newest > last + reach):
            missing.append(f"{n_after} context frames after (end of the data)")
        deadline = last + timedelta(hours=settings.wait_hours)
        batch = PcaBatch(frames_of_batch, earlier[:n_before][::-1], later[:n_after], BatchStatus.READY, deadline)
        if missing and now < deadline:
            batch.status = BatchStatus.WAIT
            batch.reason = f"{'; '.join(missing)}: waiting until {deadline:%Y-%m-%dT%H:%M:%S}"
        elif short:
            batch.status = BatchStatus.REFUSED
            batch.reason = (
                f"{count} frames with context ({len(frames_of_batch)} to filter) within "
                f"{settings.max_context_hours:g} h, "
                f"punchbowl's PCA needs min_frames = {settings.min_frames}"
            )
        else:
            batch.flags = [f"made short of context: {m}" for m in missing]
        batches.append(batch)
    return batches
