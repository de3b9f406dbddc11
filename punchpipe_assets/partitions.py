"""Time partitions of the products (single-dimension, keyed by observation time)."""

import dagster as dg

MISSION_START = "2025-03-01-00:00"

# Per-image levels: one partition per hour of acquisition time (UTC).
hourly_partitions = dg.HourlyPartitionsDefinition(start_date=MISSION_START, end_offset=1)
