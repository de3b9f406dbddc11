"""The calibration sensor: instrument-team deliveries validated, installed and catalogued."""

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from sqlalchemy import select

from punchpipe_assets.assets.calibration import calibration_key
from punchpipe_assets.calibration import (
    CalibrationError,
    kind_for_code,
    parse_calibration_name,
    validate_calibration_file,
    version_key,
)
from punchpipe_assets.cameras import CAMERA_BY_OBS
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.level1 import existing_product
from punchpipe_assets.lineage import partitions_reselecting
from punchpipe_assets.partitions import hourly_partitions
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource
from punchpipe_assets.resources.archive import sha256_of, write_atomically
from punchpipe_assets.resources.catalog import CalibrationDelivery, ProductFile
from punchpipe_assets.telemetry.ingest import quarantine

CALIBRATION_SUFFIXES = (".fits", ".bin")


@dataclass
class DeliveryResult:
    """What registering one delivered calibration file did."""

    name: str
    state: str
    reason: str | None = None
    code: str | None = None
    observatory: str | None = None
    path: str | None = None
    sha256: str | None = None
    superseded: list[str] = field(default_factory=list)
    affected: dict[str, list[str]] = field(default_factory=dict)
    date_obs: datetime | None = None


def register_calibration_file(
    session, path: Path, archive: ArchiveResource, quarantine_dir: Path, image_shape: tuple[int, int]
) -> DeliveryResult:
    """Validate a delivered calibration file, install it in the archive and catalogue it.

    A file that cannot be used is moved to quarantine with its reason; the versions already
    installed keep serving. A newer ``file_version`` supersedes the older ones of its code and
    camera (the selection rule takes the newest version first).
    """
    try:
        code, obs, date_obs, version = parse_calibration_name(path.name)
        kind_for_code(code)
        validate_calibration_file(path, obs, code, shape=image_shape)
    except (CalibrationError, KeyError, ValueError) as error:
        reason = str(error) if isinstance(error, CalibrationError) else f"{path.name}: {error}"
        quarantine(path, quarantine_dir, reason)
        session.add(CalibrationDelivery(name=path.name, state="quarantined", reason=reason))
        return DeliveryResult(path.name, "quarantined", reason)

    target = archive.product_path("1", code, obs, date_obs, version, suffix=path.suffix.lstrip("."))
    write_atomically(target, lambda temporary: shutil.copyfile(path, temporary))
    os.unlink(path)
    digest = sha256_of(target)
    product = existing_product(session, code, obs, date_obs, version) or ProductFile(
        level="1", file_type=code, observatory=obs, date_obs=date_obs, file_version=version
    )
    product.path, product.sha256, product.fingerprint, product.state = str(target), digest, digest, "active"
    session.add(product)
    session.flush()
    result = DeliveryResult(path.name, "active", None, code, obs, str(target), digest, date_obs=date_obs)
    session.add(CalibrationDelivery(name=path.name, code=code, observatory=obs, file_id=product.id, state="active"))
    session.flush()
    result.superseded = _supersede_older_versions(session, code, obs)
    if path.name in result.superseded:
        result.state = "superseded"
    result.affected = partitions_reselecting(session, product)
    return result


def _supersede_older_versions(session, code: str, obs: str) -> list[str]:
    """Mark every delivery of a code and camera older than its newest version superseded."""
    rows = session.execute(
        select(CalibrationDelivery, ProductFile)
        .join(ProductFile, CalibrationDelivery.file_id == ProductFile.id)
        .where(CalibrationDelivery.code == code, CalibrationDelivery.observatory == obs)
    ).all()
    newest = max(version_key(product.file_version) for _, product in rows)
    superseded = []
    for delivery, product in rows:
        state = "active" if version_key(product.file_version) == newest else "superseded"
        if state == "superseded":
            superseded.append(delivery.name)
            delivery.reason = "a newer file_version of this calibration exists"
        delivery.state = product.state = state
    return superseded


def scan_calibration_landing(
    catalog: CatalogResource, archive: ArchiveResource, config: PipelineConfig, now: float | None = None
) -> list[DeliveryResult]:
    """Register every settled new file in the calibration landing folder."""
    config.make_dirs()
    now = now if now is not None else datetime.now().timestamp()
    with catalog.session() as session:
        known = set(session.scalars(select(CalibrationDelivery.name)))
    candidates = []
    with os.scandir(config.calibration_landing_dir) as entries:
        for entry in entries:
            if entry.name.endswith(CALIBRATION_SUFFIXES) and entry.name not in known and entry.is_file():
                if now - entry.stat().st_mtime >= config.sensor.settle_seconds:
                    candidates.append(Path(entry.path))
    results = []
    shape = (config.calibration_image_size, config.calibration_image_size)
    for path in sorted(candidates):
        with catalog.session() as session:
            results.append(register_calibration_file(session, path, archive, Path(config.quarantine_dir), shape))
    return results


def delivery_partition(result: DeliveryResult) -> str:
    """The hourly partition a delivery is dated in (the first partition for earlier dates)."""
    first = hourly_partitions.start.replace(tzinfo=None)
    return hourly_partitions.get_partition_key_for_timestamp(
        max(result.date_obs, first).replace(tzinfo=UTC).timestamp()
    )


def calibration_events(results: list[DeliveryResult]) -> list[dg.AssetObservation]:
    """Observations of the calibration external assets: where each delivery changes products.

    A partition of ``calibration_{kind}_{camera}`` stands for the calibration its hour's frames
    are made with. A delivery is reported in the partitions whose early Level 1 products the
    selection rule now makes with other files, so Dagster marks exactly those partitions of
    ``level1_early_{camera}`` stale, and in the partition of its own date, so that every delivery
    is on record (Dagster's staleness also needs a record older than the products it compares).
    Observations, not materializations: Dagster reads the data versions of external assets from
    observations.
    """
    events = []
    for result in results:
        if result.state == "quarantined":
            continue
        kind = kind_for_code(result.code)
        version = hashlib.sha256(result.sha256.encode()).hexdigest()[:24]
        partitions = {**{delivery_partition(result): []}, **result.affected}
        for partition, products in sorted(partitions.items()):
            events.append(
                dg.AssetObservation(
                    asset_key=calibration_key(kind.name, CAMERA_BY_OBS[result.observatory]),
                    partition=partition,
                    description=f"calibration {result.name} delivered: {len(products)} products to remake here",
                    metadata={
                        "file": result.name,
                        "path": dg.MetadataValue.path(result.path),
                        "code": result.code,
                        "sha256": result.sha256,
                        "state": result.state,
                        "superseded": result.superseded,
                        "products_to_remake": products,
                    },
                    tags={"dagster/data_version": version},
                )
            )
    return events


def build_calibration_sensor(interval_seconds: int = 30) -> dg.SensorDefinition:
    """The calibration delivery sensor, evaluated every ``interval_seconds``."""

    @dg.sensor(
        name="calibration_delivery_sensor",
        description="Validates calibration files delivered to calibration-landing/, installs them in "
        "the archive and records them as calibration external assets; broken files go to quarantine.",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def calibration_delivery_sensor(
        context: dg.SensorEvaluationContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> dg.SensorResult:
        """Register new calibration deliveries."""
        results = scan_calibration_landing(catalog, archive, pipeline.config)
        for result in results:
            log = context.log.warning if result.state == "quarantined" else context.log.info
            log(f"{result.name}: {result.state}{': ' + result.reason if result.reason else ''}")
            if result.affected:
                context.log.info(
                    f"{result.name}: {sum(map(len, result.affected.values()))} products in "
                    f"{len(result.affected)} partitions are now made with other calibration files (stale)"
                )
        return dg.SensorResult(asset_events=calibration_events(results))

    return calibration_delivery_sensor
