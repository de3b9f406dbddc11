"""Time partitions of the products (single-dimension, keyed by observation time) and the fixed epoch."""

from datetime import datetime

import dagster as dg

MISSION_START = "2025-03-01-00:00"
#: The fixed epoch of every grid (cadence slots, model grids, averaging bins): naive UTC.
MISSION_EPOCH = datetime.strptime(MISSION_START, "%Y-%m-%d-%H:%M")

# Per-image levels: one partition per hour of acquisition time (UTC).
hourly_partitions = dg.HourlyPartitionsDefinition(start_date=MISSION_START, end_offset=1)

# Daily models (stray light) and daily sets of 32-minute bins (a day holds exactly 45): one partition per UTC day.
daily_partitions = dg.DailyPartitionsDefinition(start_date=MISSION_EPOCH, end_offset=1)


def model_grid_partitions(spacing_hours: int) -> dg.TimeWindowPartitionsDefinition:
    """One partition per grid time of a model grid every ``spacing_hours`` from midnight (keyed by the grid time).

    The partition of grid time ``t`` exists from ``t`` on (``end_offset=1``): a model built from the
    data before ``t`` can be made as soon as ``t`` has passed.
    """
    return dg.TimeWindowPartitionsDefinition(
        start=MISSION_EPOCH,
        cron_schedule=f"0 */{spacing_hours} * * *" if spacing_hours < 24 else "0 0 * * *",
        fmt="%Y-%m-%d-%H:%M",
        end_offset=1,
    )
