"""What the catalog holds: products per level, every telemetry file and calibration delivery with its state."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import func, select

from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.resources.catalog import (
    CalibrationDelivery,
    CatalogResource,
    Packet,
    ProductFile,
    TelemetryFile,
    TelemetryFileState,
)
from punchpipe_assets.sensors.landing_folder import Registered, survey_landing


def catalog_status(config: PipelineConfig) -> dict:
    """Return products per level and code, and the state of every telemetry file.

    ``telemetry`` lists every registered file (with its ``history`` of states once it has more
    than one) and then every entry of the landing folder not registered yet, with why:
    ``settling``, ``writing`` (``*.part``), ``waiting`` (settled, for the next scan), or
    ``not read`` (a registered name back in the folder).
    """
    catalog = CatalogResource(url=config.catalog_url)
    with catalog.session() as session:
        levels: dict[str, dict[str, int]] = {}
        rows = session.execute(
            select(ProductFile.level, ProductFile.file_type, ProductFile.observatory, func.count(ProductFile.id))
            .where(
                ProductFile.id.not_in(
                    select(CalibrationDelivery.file_id).where(CalibrationDelivery.file_id.is_not(None))
                )
            )
            .group_by(ProductFile.level, ProductFile.file_type, ProductFile.observatory)
        )
        for level, file_type, obs, count in rows:
            levels.setdefault(level, {})[f"{file_type}{obs}"] = count
        packet_states = dict(session.execute(select(Packet.state, func.count(Packet.id)).group_by(Packet.state)).all())
        history: dict[int, list[dict]] = defaultdict(list)
        for row in session.scalars(select(TelemetryFileState).order_by(TelemetryFileState.id)):
            history[row.telemetry_file_id].append(
                {
                    "at": f"{row.recorded_at:%Y-%m-%dT%H:%M:%S}",
                    "state": row.state,
                    "reason": row.reason,
                    "size": row.size,
                }
            )
        telemetry = []
        registered = {}
        for t in session.scalars(select(TelemetryFile).order_by(TelemetryFile.id)):
            telemetry.append({"file": t.name, "state": t.state, "reason": t.reason, "packets": t.n_packets})
            if len(history[t.id]) > 1:
                telemetry[-1]["history"] = history[t.id]
            registered[t.name] = Registered(t.state, t.size)
        calibration = [
            {"file": d.name, "state": d.state, "reason": d.reason}
            for d in session.scalars(select(CalibrationDelivery).order_by(CalibrationDelivery.id))
        ]
    unregistered = landing_status(config, registered)
    grown = {row["file"] for row in unregistered if row["file"] in registered}
    grown -= {name for name, known in registered.items() if known.state == "unreadable"}
    for row in telemetry:
        if row["file"] in grown:
            row["pending"] = "grown since it was read: read again once settled"
    telemetry.extend(row for row in unregistered if row["file"] not in registered)
    return {"levels": levels, "packets": packet_states, "telemetry": telemetry, "calibration": calibration}


def landing_status(config: PipelineConfig, registered: dict[str, Registered]) -> list[dict]:
    """Return the landing folder entries the catalog does not account for yet, each with why."""
    if not config.landing_dir.is_dir():
        return []
    settle = config.sensor.settle_seconds
    survey = survey_landing(config.landing_dir, registered, datetime.now().timestamp(), settle)
    rows = [
        {
            "file": name,
            "state": "settling",
            "reason": f"modified {age:.0f} s ago: read once unchanged for {settle:g} s",
            "packets": 0,
        }
        for name, age in survey.settling
    ]
    rows += [
        {"file": name, "state": "writing", "reason": "*.part: still being written", "packets": 0}
        for name in survey.writing
    ]
    waiting = [path.name for path in survey.new + survey.grown + survey.retry] + [bad.name for bad in survey.bad]
    rows += [
        {"file": name, "state": "waiting", "reason": "settled: read at the next scan", "packets": 0} for name in waiting
    ]
    rows += [
        {
            "file": name,
            "state": "not read",
            "reason": f"a file of this name was {state}: deliver it under a new name",
            "packets": 0,
        }
        for name, state in survey.ignored
    ]
    return rows
