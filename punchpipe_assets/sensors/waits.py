"""The waits sensor: partitions whose incomplete groups, bins or models waited long enough, requested again."""

from __future__ import annotations

import dagster as dg
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from punchpipe_assets.resources import CatalogResource
from punchpipe_assets.resources.catalog import Wait, utcnow


def record_waits(session: Session, asset_key: dg.AssetKey, partition_key: str, waits: list[tuple]) -> None:
    """Replace the waits of one asset partition by the earliest of ``waits`` (``(until, reason)`` pairs).

    Called by an asset at each materialization of the partition; with no waits the row is removed.
    """
    key = asset_key.to_user_string()
    session.execute(delete(Wait).where(Wait.asset_key == key, Wait.partition_key == partition_key))
    if waits:
        until, reason = min(waits, key=lambda wait: wait[0])
        session.add(
            Wait(
                asset_key=key, partition_key=partition_key, until=until, reason=f"{len(waits)} waiting; {reason}"[:2000]
            )
        )


def expired_wait_requests(
    session: Session, repository_def: dg.RepositoryDefinition, priority: int
) -> list[dg.RunRequest]:
    """Run requests for the asset partitions whose wait is over (once per wait: the run key holds its end)."""
    requests = []
    graph = repository_def.asset_graph
    for wait in session.scalars(select(Wait).where(Wait.until <= utcnow()).order_by(Wait.until.desc())):
        key = dg.AssetKey.from_user_string(wait.asset_key)
        if not graph.has(key):
            continue
        # A multi-asset that cannot be subset is requested whole.
        keys = sorted(graph.get(key).execution_set_asset_keys, key=lambda k: k.to_user_string())
        requests.append(
            dg.RunRequest(
                run_key=f"{wait.asset_key}|{wait.partition_key}|{wait.until.isoformat()}",
                asset_selection=keys,
                partition_key=wait.partition_key,
                tags={"dagster/priority": str(priority), "punchpipe/reason": "wait over"},
            )
        )
    return requests


def build_waits_sensor(interval_seconds: int = 30, priority: int = 5) -> dg.SensorDefinition:
    """Build the sensor re-requesting partitions whose wait for missing inputs is over."""

    @dg.sensor(
        name="waits_expired_sensor",
        description="Requests again the partitions whose incomplete groups, bins or models waited their "
        "configured time for missing inputs (recorded by the assets in the catalog's waits), so that they "
        "are made from what exists, flagged, without a human.",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        # Any asset may wait; each request names one asset's execution set (one partitions definition)
        # and runs in the implicit asset job, as the landing sensor's do.
        asset_selection=dg.AssetSelection.all(),
    )
    def waits_expired_sensor(context: dg.SensorEvaluationContext, catalog: CatalogResource) -> dg.SensorResult:
        """Request the partitions whose wait is over."""
        with catalog.session() as session:
            requests = expired_wait_requests(session, context.repository_def, priority)
        return dg.SensorResult(run_requests=requests)

    return waits_expired_sensor
