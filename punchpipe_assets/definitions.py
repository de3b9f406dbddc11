"""The code location: every asset, check, sensor and resource of the pipeline."""

import dagster as dg

from punchpipe_assets.assets.level0 import level0_assets
from punchpipe_assets.assets.telemetry import telemetry_specs
from punchpipe_assets.config import load_config
from punchpipe_assets.resources import build_resources
from punchpipe_assets.sensors.landing import telemetry_landing_sensor

# Level 0 of all four cameras for one block of hours, as the landing sensor requests it.
level0_job = dg.define_asset_job(
    "level0_job",
    selection=dg.AssetSelection.groups("level0"),
    description="Level 0 of all cameras for the selected hours.",
)

defs = dg.Definitions(
    assets=[*telemetry_specs, *level0_assets],
    jobs=[level0_job],
    sensors=[telemetry_landing_sensor],
    resources=build_resources(load_config()),
    # One process per run: punchbowl is imported once per run, not once per step.
    executor=dg.in_process_executor,
)
