"""Time partitions of the products (single-dimension, keyed by observation time)."""

from datetime import datetime

import dagster as dg

MISSION_START = "2025-03-01-00:00"

# Per-image levels: one partition per hour of acquisition time (UTC).
hourly_partitions = dg.HourlyPartitionsDefinition(start_date=MISSION_START, end_offset=1)

# Daily models (stray light): one partition per UTC day, from the same start.
daily_partitions = dg.DailyPartitionsDefinition(
    start_date=datetime.strptime(MISSION_START, "%Y-%m-%d-%H:%M"), end_offset=1
)
