"""The code location: every asset, check, sensor and resource of the pipeline."""

import warnings
from datetime import timedelta
from functools import lru_cache

import dagster as dg

from punchpipe_assets.calibration.assets import calibration_specs
from punchpipe_assets.cameras import CAMERAS
from punchpipe_assets.config import PipelineConfig, load_config
from punchpipe_assets.execution import executor_for
from punchpipe_assets.level0.assets import level0_assets
from punchpipe_assets.level1.assets import build_level1_early_asset, build_level1_late_assets
from punchpipe_assets.level2.assets import build_level2_assets
from punchpipe_assets.level2.nfi_pca_assets import build_nfi_pca_assets
from punchpipe_assets.level3.assets import build_level3_assets
from punchpipe_assets.levelq.assets import build_levelq_assets
from punchpipe_assets.levelq.movie import build_levelq_ctm_movie
from punchpipe_assets.resources import build_resources
from punchpipe_assets.sensors.calibration import build_calibration_sensor
from punchpipe_assets.sensors.landing import build_landing_sensor
from punchpipe_assets.sensors.waits import build_waits_sensor
from punchpipe_assets.telemetry.assets import telemetry_specs
from punchpipe_assets.watchdog import product_count_checks, with_freshness

warnings.filterwarnings("ignore", category=dg.BetaWarning)

# Level 0 of all four cameras for one block of hours, as the landing sensor requests it.
level0_job = dg.define_asset_job(
    "level0_job",
    selection=dg.AssetSelection.groups("level0"),
    description="Level 0 of all cameras for the selected hours.",
)


#: Assets made by sensors (telemetry, calibration) or from telemetry by the landing sensor (Level 0).
UNAUTOMATED = dg.AssetSelection.groups("level0", "telemetry", "calibration")
#: QuickPUNCH: quick Level 1 and every Level Q product, automated at a higher priority.
QUICKLOOK = dg.AssetSelection.groups("levelq") | dg.AssetSelection.assets(
    *[dg.AssetKey(f"level1_quick_{camera.slug}") for camera in CAMERAS if camera.instrument == "WFI"]
)


def build_definitions(config: PipelineConfig) -> dg.Definitions:
    """Build the definitions of one installation.

    Parameters
    ----------
    config
        The validated configuration (catalog URL, archive folder...).

    """
    lookback = timedelta(days=config.automation.lookback_days)
    level1_early_assets = [build_level1_early_asset(camera, lookback) for camera in CAMERAS]
    defs = dg.Definitions(
        assets=[
            *telemetry_specs,
            *calibration_specs,
            *level0_assets,
            *level1_early_assets,
            *build_level1_late_assets(lookback),
            build_level2_assets(config, lookback),
            build_nfi_pca_assets(config, lookback),
            *build_levelq_assets(config, lookback),
            build_levelq_ctm_movie(config, lookback),
            *build_level3_assets(config, lookback),
        ],
        asset_checks=product_count_checks(config),
        jobs=[level0_job],
        sensors=[
            build_landing_sensor(config.sensor.interval_seconds, config.automation.newest_priority),
            build_calibration_sensor(config.sensor.interval_seconds),
            build_waits_sensor(config.sensor.interval_seconds, config.automation.automatic_priority),
            dg.AutomationConditionSensorDefinition(
                "automation_sensor",
                target=dg.AssetSelection.all() - UNAUTOMATED - QUICKLOOK,
                description="Declarative Automation of Level 1 and later: new and late data carried on without a "
                "human, within automation.lookback_days; operator backfills behind (priority 0).",
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=config.automation.interval_seconds,
                run_tags={"dagster/priority": str(config.automation.automatic_priority)},
            ),
            dg.AutomationConditionSensorDefinition(
                "quicklook_automation_sensor",
                target=QUICKLOOK,
                description="Declarative Automation of QuickPUNCH (quick Level 1 and Level Q) for forecasters, at a "
                "higher run priority than back-processing.",
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=config.automation.interval_seconds,
                run_tags={"dagster/priority": str(config.automation.quicklook_priority)},
            ),
        ],
        resources=build_resources(config),
        loggers={"console": dg.colored_console_logger.configured({"log_level": config.run_log_level})},
        # In process (default): one process per run, punchbowl imported once per run, not once per step.
        executor=executor_for(config.execution),
    )
    return with_freshness(defs, config.freshness)


@dg.definitions
def defs() -> dg.Definitions:
    """Return the code location as configured now (``$PUNCHPIPE_CONFIG``, else ``$PUNCHPIPE_HOME/punchpipe.yaml``).

    Loaded lazily, each time Dagster loads the code location, so that ``punchpipe process`` and the
    runs it reconstructs load the configuration it gives them.
    """
    return _definitions_of(load_config().model_dump_json())


@lru_cache(maxsize=4)
def _definitions_of(config_json: str) -> dg.Definitions:
    """Build the definitions of a configuration, once per process (Dagster reloads the location per run)."""
    return build_definitions(PipelineConfig.model_validate_json(config_json))
