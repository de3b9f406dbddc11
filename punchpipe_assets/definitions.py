"""The code location: every asset, check, sensor and resource of the pipeline."""

import warnings
from datetime import timedelta

import dagster as dg

from punchpipe_assets.assets.calibration import calibration_specs
from punchpipe_assets.assets.level0 import level0_assets
from punchpipe_assets.assets.level1 import build_level1_early_asset
from punchpipe_assets.assets.level1_late import build_level1_late_assets
from punchpipe_assets.cameras import CAMERAS
from punchpipe_assets.assets.telemetry import telemetry_specs
from punchpipe_assets.config import PipelineConfig, load_config
from punchpipe_assets.resources import build_resources
from punchpipe_assets.sensors.calibration import build_calibration_sensor
from punchpipe_assets.sensors.landing import build_landing_sensor

warnings.filterwarnings("ignore", category=dg.BetaWarning)

# Level 0 of all four cameras for one block of hours, as the landing sensor requests it.
level0_job = dg.define_asset_job(
    "level0_job",
    selection=dg.AssetSelection.groups("level0"),
    description="Level 0 of all cameras for the selected hours.",
)


def build_definitions(config: PipelineConfig) -> dg.Definitions:
    """The definitions of one installation.

    Parameters
    ----------
    config
        The validated configuration (catalog URL, archive folder...).
    """
    lookback = timedelta(days=config.automation.lookback_days)
    level1_early_assets = [build_level1_early_asset(camera, lookback) for camera in CAMERAS]
    return dg.Definitions(
        assets=[*telemetry_specs, *calibration_specs, *level0_assets, *level1_early_assets,
                *build_level1_late_assets(lookback)],
        jobs=[level0_job],
        sensors=[
            build_landing_sensor(config.sensor.interval_seconds, config.automation.newest_priority),
            build_calibration_sensor(config.sensor.interval_seconds),
            dg.AutomationConditionSensorDefinition(
                "level1_automation_sensor",
                target=dg.AssetSelection.all() - dg.AssetSelection.groups("level0", "telemetry", "calibration"),
                description="Declarative Automation of Level 1 and later: new and late Level 0 data carried "
                "on without a human; newest data first (run priority), operator backfills behind.",
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=config.automation.interval_seconds,
                run_tags={"dagster/priority": str(config.automation.automatic_priority)},
            ),
        ],
        resources=build_resources(config),
        # One process per run: punchbowl is imported once per run, not once per step.
        executor=dg.in_process_executor,
    )


defs = build_definitions(load_config())
