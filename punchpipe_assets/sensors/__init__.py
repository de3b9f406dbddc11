"""Dagster sensors: telemetry landing, calibration deliveries and expired waits."""
