"""The landing sensor: new downlink files in, Level 0 run requests out."""

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from punchpipe_assets.cameras import CAMERA_BY_OBS, CAMERA_BY_SPACECRAFT_ID
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.level0.assets import level0_key
from punchpipe_assets.resources import CatalogResource, PipelineResource
from punchpipe_assets.resources.catalog import Packet, TelemetryFile, utcnow
from punchpipe_assets.sensors.landing_folder import BadEntry, Registered, survey_landing
from punchpipe_assets.telemetry.assets import telemetry_key
from punchpipe_assets.telemetry.ingest import (
    IngestResult,
    hour_of,
    record_quarantined,
    record_unreadable,
    register_telemetry_file,
)
from punchpipe_assets.telemetry.packets import load_packet_set
from punchpipe_assets.telemetry.regrow import reexamine_telemetry_file

PARTITION_FORMAT = "%Y-%m-%d-%H:%M"


@dataclass
class Level0Request:
    """Level 0 work for one block of consecutive hours."""

    first_hour: datetime
    last_hour: datetime
    observatories: list[str]

    @property
    def partition_keys(self) -> tuple[str, str]:
        """First and last partition key of the block."""
        return self.first_hour.strftime(PARTITION_FORMAT), self.last_hour.strftime(PARTITION_FORMAT)

    @property
    def asset_keys(self) -> list[dg.AssetKey]:
        """The Level 0 assets to materialize."""
        return [level0_key(CAMERA_BY_OBS[obs]) for obs in self.observatories]


@dataclass
class LandingScan:
    """One evaluation of the landing folder."""

    ingested: list[IngestResult] = field(default_factory=list)
    requests: list[Level0Request] = field(default_factory=list)
    unsettled: int = 0
    remaining: int = 0
    run_key: str = ""


def registered_files(catalog: CatalogResource) -> dict[str, Registered]:
    """Every telemetry file name the catalog knows, with its state and size."""
    with catalog.session() as session:
        rows = session.execute(select(TelemetryFile.name, TelemetryFile.state, TelemetryFile.size))
        return {name: Registered(state, size) for name, state, size in rows}


def new_landing_files(config: PipelineConfig, known: set[str], now: float) -> tuple[list[Path], int]:
    """Downlink files in the landing folder that the catalog does not know, oldest first.

    A file modified within ``settle_seconds``, or still named ``*.part``, is being written and is
    left for a later tick. Returns the settled new files and the number still settling.
    """
    registered = {name: Registered("quarantined", 0) for name in known}
    survey = survey_landing(Path(config.landing_dir), registered, now, config.sensor.settle_seconds)
    return survey.new, len(survey.settling)


def scan_landing(
    catalog: CatalogResource,
    config: PipelineConfig,
    max_files: int | None = None,
    busy: set[tuple[str, datetime]] = frozenset(),
) -> LandingScan:
    """Register new downlinks and work out which Level 0 partitions need to run.

    The catalog, not the cursor, decides what is new and what is requested, so a restart neither
    skips nor repeats a file: registration is idempotent, packets never attempted by a Level 0 run
    are requested again, and the same catalog state gives the same run key (Dagster launches a
    run key once). Nothing in the landing folder raises: entries that are not readable downlinks
    are quarantined or recorded with their reason, registered files that grew are read again.

    Parameters
    ----------
    catalog
        The file catalog.
    config
        The configuration.
    max_files
        At most this many files are registered (default: the sensor setting).
    busy
        (observatory, hour) pairs that a queued or running run already covers: not requested again
        (packets that arrive while it runs stay unattempted and are requested after it).

    Returns
    -------
    LandingScan
        What was registered and the Level 0 requests.

    """
    config.make_dirs()
    packet_set = load_packet_set(config.telemetry_definitions)
    scan = LandingScan()
    survey = survey_landing(
        Path(config.landing_dir), registered_files(catalog), datetime.now().timestamp(), config.sensor.settle_seconds
    )
    scan.unsettled = len(survey.settling)
    limit = max_files or config.sensor.max_files_per_tick
    work = [(path, "new") for path in survey.new] + [(path, "grown") for path in survey.grown]
    work += [(path, "new") for path in survey.retry]  # last: files that stay unreadable never hold others back
    scan.remaining = max(len(work) - limit, 0)
    quarantine_dir = Path(config.quarantine_dir)
    for bad in survey.bad:
        scan.ingested.extend(
            _guarded(catalog, bad.name, lambda session, bad=bad: _record_bad(session, bad, quarantine_dir))
        )
    for path, kind in work[:limit]:
        if kind == "new":
            step = lambda session, path=path: register_telemetry_file(session, path, packet_set, quarantine_dir)  # noqa: E731
        else:
            step = lambda session, path=path: reexamine_telemetry_file(session, path, packet_set)  # noqa: E731
        scan.ingested.extend(_guarded(catalog, path.name, step))
    touched: dict[datetime, set[str]] = defaultdict(set)
    with catalog.session() as session:
        for obs, hour in _hours_needing_attempts(session, config) - set(busy):
            touched[hour].add(obs)
        high_water = session.scalar(select(func.max(Packet.id))) or 0
    scan.requests = hour_blocks(touched)
    plan = [(r.partition_keys, r.observatories) for r in scan.requests]
    scan.run_key = hashlib.sha256(json.dumps([high_water, plan]).encode()).hexdigest()[:16]
    return scan


def _record_bad(session, bad: BadEntry, quarantine_dir: Path) -> IngestResult | None:
    """Quarantine a bad landing entry, or record it as unreadable (left in place), with its reason."""
    if bad.quarantine:
        return record_quarantined(session, bad.path, bad.name, quarantine_dir, bad.reason, bad.quarantine_name)
    return record_unreadable(session, bad.name, bad.reason)


def _guarded(catalog: CatalogResource, name: str, step: Callable) -> list[IngestResult]:
    """Run one file's registration in its own transaction; a failure is recorded, never raised."""
    try:
        with catalog.session() as session:
            result = step(session)
    except Exception as error:  # noqa: BLE001 - one file never stops the scan: recorded with its reason
        reason = f"could not be registered: {type(error).__name__}: {error}"
        try:
            with catalog.session() as session:
                result = record_unreadable(session, name, reason)
        except SQLAlchemyError:
            return [IngestResult(name=name, state="unreadable", reason=reason)]
    return [result] if result is not None else []


def _hours_needing_attempts(session, config: PipelineConfig) -> set[tuple[str, datetime]]:
    """Hours with packets never attempted, or with images whose replay wait ended since the last attempt."""
    wait = timedelta(hours=config.level0.replay_wait_hours)
    now = utcnow()
    rows = session.execute(
        select(
            Packet.spacecraft_id,
            Packet.kind,
            Packet.timestamp,
            func.min(Packet.last_attempt),
            func.count(Packet.id) - func.count(Packet.last_attempt),
            func.min(TelemetryFile.registered_at),
        )
        .join(TelemetryFile, Packet.telemetry_file_id == TelemetryFile.id)
        .where(Packet.state == "pending")
        .group_by(Packet.spacecraft_id, Packet.kind, Packet.timestamp)
    )
    hours = set()
    for spacecraft_id, kind, timestamp, last_attempt, never_attempted, first_received in rows:
        camera = CAMERA_BY_SPACECRAFT_ID.get(spacecraft_id)
        expired = kind == "image" and last_attempt is not None and last_attempt < first_received + wait <= now
        if camera is not None and (never_attempted or expired):
            hours.add((camera.obs, hour_of(timestamp)))
    return hours


def level0_work_in_progress(instance: dg.DagsterInstance) -> set[tuple[str, datetime]]:
    """(observatory, hour) pairs covered by queued or running Level 0 runs (sensor runs and backfills)."""
    statuses = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
    ]
    obs_by_key = {level0_key(camera): camera.obs for camera in CAMERA_BY_OBS.values()}
    busy = set()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=statuses)):
        observatories = [obs_by_key[key] for key in run.asset_selection or obs_by_key if key in obs_by_key]
        first = run.tags.get("dagster/asset_partition_range_start") or run.tags.get("dagster/partition")
        last = run.tags.get("dagster/asset_partition_range_end") or first
        if not first or not observatories:
            continue
        hour, end = datetime.strptime(first, PARTITION_FORMAT), datetime.strptime(last, PARTITION_FORMAT)
        while hour <= end:
            busy.update((obs, hour) for obs in observatories)
            hour += timedelta(hours=1)
    return busy


def hour_blocks(touched: dict[datetime, set[str]]) -> list[Level0Request]:
    """Group touched hours into runs of consecutive hours, each with the union of its cameras."""
    requests: list[Level0Request] = []
    for hour in sorted(touched):
        last = requests[-1] if requests else None
        if last is not None and hour - last.last_hour == timedelta(hours=1):
            last.last_hour = hour
            last.observatories = sorted(set(last.observatories) | touched[hour])
        else:
            requests.append(Level0Request(hour, hour, sorted(touched[hour])))
    return requests


NEWEST_DATA_AGE = timedelta(hours=24)


def run_priority(request: Level0Request, newest_priority: int, now: datetime | None = None) -> int:
    """Run queue priority of a block: the newest data first, back-processing behind.

    A block reaching into the last 24 hours gets ``newest_priority``; older blocks (replays,
    back-processing) get 1, still ahead of operator backfills (priority 0).
    """
    now = now or utcnow()
    return newest_priority if now - request.last_hour <= NEWEST_DATA_AGE else 1


def run_request_for(request: Level0Request, run_key: str, priority: int = 0) -> dg.RunRequest:
    """Make the Dagster run request for one block (a partition range run if it spans several hours)."""
    first, last = request.partition_keys
    tags = {"dagster/priority": str(priority)}
    if first == last:
        return dg.RunRequest(
            run_key=f"{run_key}-{first}", asset_selection=request.asset_keys, partition_key=first, tags=tags
        )
    return dg.RunRequest(
        run_key=f"{run_key}-{first}-{last}",
        asset_selection=request.asset_keys,
        tags={**tags, "dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
    )


def telemetry_events(scan: LandingScan) -> list[dg.AssetMaterialization]:
    """Materializations of the telemetry external assets, one per registered file and spacecraft."""
    events = []
    for result in scan.ingested:
        for obs in sorted(result.cameras) or [None]:
            if obs is None:
                continue
            events.append(
                dg.AssetMaterialization(
                    asset_key=telemetry_key(CAMERA_BY_OBS[obs]),
                    description=f"downlink {result.name} registered",
                    metadata={
                        "file": result.name,
                        "state": result.state,
                        "reason": result.reason or "",
                        "packets": result.n_packets,
                        "skipped_packets": result.skipped_packets,
                    },
                )
            )
    return events


def build_landing_sensor(interval_seconds: int = 30, newest_priority: int = 10) -> dg.SensorDefinition:
    """Build the landing sensor, evaluated every ``interval_seconds``; ``newest_priority`` see ``run_priority``."""

    @dg.sensor(
        name="telemetry_landing_sensor",
        description="Registers new downlink files in the landing folder and requests the Level 0 "
        "partitions their packets touch.",
        asset_selection=dg.AssetSelection.groups("level0"),
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def telemetry_landing_sensor(
        context: dg.SensorEvaluationContext, catalog: CatalogResource, pipeline: PipelineResource
    ) -> dg.SensorResult:
        """Register new telemetry and request Level 0 work."""
        scan = scan_landing(catalog, pipeline.config, busy=level0_work_in_progress(context.instance))
        for result in scan.ingested:
            log = (
                context.log.warning
                if result.state in ("quarantined", "partial", "unreadable", "skipped")
                else context.log.info
            )
            log(
                f"{result.name}: {result.state} ({result.n_packets} packets)"
                f"{': ' + result.reason if result.reason else ''}"
            )
        if scan.unsettled:
            context.log.info(
                f"{scan.unsettled} files settling (modified within {pipeline.config.sensor.settle_seconds:g} s): "
                "read at a later tick"
            )
        cursor = json.dumps({"registered": len(scan.ingested), "remaining": scan.remaining, "run_key": scan.run_key})
        return dg.SensorResult(
            run_requests=[
                run_request_for(request, scan.run_key, run_priority(request, newest_priority))
                for request in scan.requests
            ],
            asset_events=telemetry_events(scan),
            cursor=cursor,
        )

    return telemetry_landing_sensor
