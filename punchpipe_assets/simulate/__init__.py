"""The telemetry simulator: PUNCH downlink files at mission cadence, with faults on request."""

from punchpipe_assets.simulate.downlinks import GARBAGE_NAME, SimulationReport, acquisition_schedule, simulate

__all__ = ["GARBAGE_NAME", "SimulationReport", "acquisition_schedule", "simulate"]
