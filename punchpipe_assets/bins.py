"""Averages over fixed time bins (32-minute low-noise products, 6-hour velocity bins) from a fixed epoch.

A day holds exactly 45 bins of 32 minutes, counted from midnight UTC. A bin is complete at the
mission cadence's count of inputs (4 clear or 8 polarized mosaics); an incomplete bin waits a
configured time after its end, then is made from what exists, flagged. Unlike the control segment
in service, every bin with at least one input is made, none is silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from punchpipe_assets.grid_models import GridModelBuilder, ModelOutcome, window_inputs
from punchpipe_assets.resources.catalog import ProductFile, utcnow

LOW_NOISE_BIN = timedelta(minutes=32)


def bin_starts(start: datetime, end: datetime, length: timedelta = LOW_NOISE_BIN) -> list[datetime]:
    """Return the starts of the bins that begin in ``[start, end)``, counted from the midnight before ``start``."""
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    first = midnight + ((start - midnight) // length) * length
    if first < start:
        first += length
    starts = []
    while first < end:
        starts.append(first)
        first += length
    return starts


def bin_of(when: datetime, length: timedelta = LOW_NOISE_BIN) -> datetime:
    """Return the start of the bin holding a time."""
    midnight = when.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + ((when - midnight) // length) * length


class BinAverager(GridModelBuilder):
    """Makes one average per bin of a window from the products whose DATE-OBS falls in the bin.

    Subclasses set the codes averaged (``input_level``, ``input_codes``, ``input_obs``), the count
    of a complete bin and the wait, and call punchbowl in ``make_cube``. The product is dated at
    the bin's centre (its ``reference_time``).
    """

    input_level = "Q"
    input_codes: Sequence[str] = ("CT",)
    input_obs = "M"
    complete_count = 4
    length = LOW_NOISE_BIN

    @property
    def wait(self) -> timedelta:
        """How long after its end an incomplete bin waits."""
        raise NotImplementedError

    def candidates(self, reference_time: datetime) -> list[ProductFile]:
        """Return the inputs of the bin centred on ``reference_time``."""
        start = reference_time - self.length / 2
        return window_inputs(
            self.session, self.input_level, self.input_codes, self.input_obs, start, start + self.length
        )

    def choose(self, candidates: list[ProductFile], reference_time: datetime) -> tuple[list[ProductFile], str | None]:
        """Every input of the bin (waiting is decided before)."""
        return candidates, None if candidates else "no input in the bin"

    def flags_for(self, inputs: list[ProductFile], reference_time: datetime) -> list[str]:
        """Flag an incomplete bin with its count."""
        if len(inputs) >= self.complete_count:
            return []
        return [f"incomplete bin: {len(inputs)} of {self.complete_count} inputs"]

    def process_window(
        self, start: datetime, end: datetime, partition_key: str | None = None, now: datetime | None = None
    ) -> list[ModelOutcome]:
        """Make, confirm or leave waiting every bin starting in ``[start, end)`` that has an input."""
        now = now or utcnow()
        outcomes = []
        for first in bin_starts(start, end, self.length):
            centre = first + self.length / 2
            inputs = self.candidates(centre)
            if not inputs:
                continue
            deadline = first + self.length + self.wait
            if len(inputs) < self.complete_count and now < deadline:
                outcomes.append(
                    ModelOutcome(
                        centre,
                        self.code,
                        self.obs,
                        "waiting",
                        deadline=deadline,
                        reason=(
                            f"{len(inputs)} of {self.complete_count} inputs; waiting until {deadline:%Y-%m-%dT%H:%M}"
                        ),
                    )
                )
                continue
            outcomes.append(self.build(centre, partition_key))
        return outcomes
