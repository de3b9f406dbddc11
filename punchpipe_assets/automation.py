"""Declarative Automation conditions and run priorities every level shares.

One scheduler: what runs and when is decided by the sensors, these conditions (evaluated by the
automation sensor in the daemon, or by ``punchpipe process`` through the same Dagster evaluation)
and operator backfills.
"""

from collections.abc import Sequence
from datetime import timedelta

import dagster as dg

from punchpipe_assets.config import AutomationSettings

# Late data (replays) are carried to Level 1 this far back, not only in the newest hour
# (the configuration's default; ``build_definitions`` passes the configured value).
AUTOMATION_LOOKBACK = timedelta(days=AutomationSettings().lookback_days)


def eager_within(
    lookback: timedelta = AUTOMATION_LOOKBACK, give_up_waiting_after: timedelta | None = None
) -> dg.AutomationCondition:
    """Eager Declarative Automation for products made from hourly inputs, back to ``lookback``.

    Any updated input partition within the window (late telemetry too) requests the partition
    once none of its inputs is missing or in progress. With ``give_up_waiting_after``, a partition
    older than that is made even with inputs missing (an hour without telemetry never gets its
    input partition). Calibration deliveries are ignored: reprocessing with new calibration is an
    operator's backfill of the stale partitions, not an automatic campaign over the mission.
    """
    condition = dg.AutomationCondition.eager().replace(
        "in_latest_time_window", dg.AutomationCondition.in_latest_time_window(lookback)
    )
    if give_up_waiting_after is not None:
        recent_with_inputs_missing = dg.AutomationCondition.any_deps_missing() & (
            dg.AutomationCondition.in_latest_time_window(give_up_waiting_after)
        )
        condition = condition.replace("any_deps_missing", recent_with_inputs_missing)
    # External calibration assets are sources: groups() leaves them out unless asked.
    return condition.ignore(dg.AssetSelection.groups("calibration", include_sources=True))


def on_new_inputs(
    lookback: timedelta = AUTOMATION_LOOKBACK,
    when_new: bool = False,
    made_from: Sequence[dg.AssetKey] = (),
) -> dg.AutomationCondition:
    """Return the automation condition of products handling missing inputs themselves (groups, bins, models).

    Any updated input partition within ``lookback`` requests the partition once none of its inputs
    is in progress; missing inputs do not hold it back, because the asset decides per group, bin or
    model what is complete, what waits (recorded in the catalog's ``waits``, re-requested by the
    ``waits_expired_sensor`` when the wait is over) and what is made incomplete, flagged. Unlike
    ``eager``, a partition is not requested merely because it newly exists, unless ``when_new``
    (a model on a grid, whose inputs all came before its grid time). Calibration deliveries are
    ignored, as for ``eager_within``. With ``made_from``, a partition is requested only while one
    of those inputs exists for it: a new model then requests the hours that have data to subtract
    it from, not every hour of the model's reach.
    """
    trigger = dg.AutomationCondition.any_deps_updated()
    if when_new:
        trigger = dg.AutomationCondition.newly_missing() | trigger
    condition = (
        dg.AutomationCondition.in_latest_time_window(lookback)
        & trigger.since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    )
    if made_from:
        condition = condition & dg.AutomationCondition.any_deps_match(~dg.AutomationCondition.missing()).allow(
            dg.AssetSelection.assets(*made_from)
        ).with_label("has data to process")
    condition = condition.with_label("on new inputs")
    return condition.ignore(dg.AssetSelection.groups("calibration", include_sources=True))
