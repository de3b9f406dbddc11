"""The calibration sensor: instrument-team deliveries validated, installed and catalogued."""

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from sqlalchemy import delete, func, select

from punchpipe_assets.calibration.assets import calibration_key
from punchpipe_assets.calibration.kinds import (
    CALIBRATION_KINDS,
    CalibrationError,
    delivered_kind,
    kind_for_code,
    parse_calibration_name,
    version_key,
)
from punchpipe_assets.calibration.validate import validate_calibration_file
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.lineage import partitions_reselecting
from punchpipe_assets.names import catalog_name, is_valid_utf8, name_bytes, safe_name
from punchpipe_assets.partitions import hourly_partitions
from punchpipe_assets.products import existing_product
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource
from punchpipe_assets.resources.archive import sha256_of, write_atomically
from punchpipe_assets.resources.catalog import CalibrationDelivery, ProductFile
from punchpipe_assets.telemetry.ingest import quarantine

CALIBRATION_SUFFIXES = (".fits", ".bin", ".csv")


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
    level: str = "1"


def register_calibration_file(
    session,
    path: Path,
    archive: ArchiveResource,
    quarantine_dir: Path,
    image_shape: tuple[int, int],
    mosaic_shape: tuple[int, int] | None = None,
) -> DeliveryResult:
    """Validate a delivered calibration file, install it in the archive and catalogue it.

    A file that cannot be used is moved to quarantine with its reason; the versions already
    installed keep serving. A newer ``file_version`` supersedes the older ones of its code and
    camera (the selection rule takes the newest version first).
    """
    try:
        code, obs, date_obs, version = parse_calibration_name(path.name)
        kind = delivered_kind(path.name)
        validate_calibration_file(path, obs, code, shape=image_shape, level=kind.level, mosaic_shape=mosaic_shape)
    except (CalibrationError, KeyError, ValueError) as error:
        reason = str(error) if isinstance(error, CalibrationError) else f"{path.name}: {error}"
        quarantine(path, quarantine_dir, reason)
        session.add(CalibrationDelivery(name=path.name, state="quarantined", reason=reason))
        return DeliveryResult(path.name, "quarantined", reason)

    target = archive.product_path(kind.level, code, obs, date_obs, version, suffix=path.suffix.lstrip("."))
    write_atomically(target, lambda temporary: shutil.copyfile(path, temporary))
    os.unlink(path)
    digest = sha256_of(target)
    product = existing_product(session, code, obs, date_obs, version, kind.level) or ProductFile(
        level=kind.level, file_type=code, observatory=obs, date_obs=date_obs, file_version=version
    )
    stored = archive.relative(target)
    product.path, product.sha256, product.fingerprint, product.state = stored, digest, digest, "active"
    session.add(product)
    session.flush()
    result = DeliveryResult(path.name, "active", None, code, obs, stored, digest, date_obs=date_obs, level=kind.level)
    session.add(CalibrationDelivery(name=path.name, code=code, observatory=obs, file_id=product.id, state="active"))
    session.flush()
    result.superseded = _supersede_older_versions(session, code, obs)
    if path.name in result.superseded:
        result.state = "superseded"
    if kind.name in CALIBRATION_KINDS:  # the files early Level 1 is made with
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


REDELIVERED_REASON = "already installed with other content: deliver a new version"


def scan_calibration_landing(
    catalog: CatalogResource, archive: ArchiveResource, config: PipelineConfig, now: float | None = None
) -> list[DeliveryResult]:
    """Register every settled file in the calibration landing folder.

    A file under the name of an installed delivery is a re-delivery: with the same content it
    is removed (it is installed already), with other content it is quarantined, since a
    calibration file is never changed under its name. A file under the name of a quarantined
    delivery is validated again (the earlier one was unusable).
    """
    config.make_dirs()
    now = now if now is not None else datetime.now().timestamp()
    with catalog.session() as session:
        known = dict(session.execute(select(CalibrationDelivery.name, CalibrationDelivery.state)).all())
    candidates = []
    with os.scandir(config.calibration_landing_dir) as entries:
        for entry in entries:
            if entry.name.endswith(CALIBRATION_SUFFIXES) and entry.is_file():
                if now - entry.stat().st_mtime >= config.sensor.settle_seconds:
                    candidates.append(Path(entry.path))
    results = []
    shape = (config.calibration_image_size, config.calibration_image_size)
    quarantine_dir = Path(config.quarantine_dir)
    for path in [path for path in candidates if not is_valid_utf8(path.name)]:
        candidates.remove(path)
        with catalog.session() as session:
            results.append(quarantine_undecodable(session, path, quarantine_dir))
    for path in sorted(candidates):
        try:
            with catalog.session() as session:
                if known.get(path.name) in ("active", "superseded"):
                    results.append(register_redelivery(session, path, quarantine_dir))
                    continue
                if known.get(path.name) == "quarantined":
                    session.execute(delete(CalibrationDelivery).where(CalibrationDelivery.name == path.name))
                results.append(
                    register_calibration_file(
                        session, path, archive, quarantine_dir, shape, config.level2.trefoil_shape
                    )
                )
        except FileNotFoundError:
            if path.exists():
                raise
            # Taken away between the listing and the read (by the sender or a second scanner):
            # nothing of it was registered; if it comes back it is read at the next tick.
            continue
    return results


def quarantine_undecodable(session, path: Path, quarantine_dir: Path) -> DeliveryResult:
    """Quarantine a delivery whose name is not valid UTF-8 under a safe name, catalogued with the reason."""
    target = safe_name(path.name, limit=200)
    reason = f"name is not valid UTF-8 ({name_bytes(path.name)!r}): quarantined as {target}; deliver it again"
    quarantine(path, quarantine_dir, reason, target)
    name = catalog_name(path.name)
    session.execute(delete(CalibrationDelivery).where(CalibrationDelivery.name == name))
    session.add(CalibrationDelivery(name=name, state="quarantined", reason=reason))
    return DeliveryResult(name, "quarantined", reason)


def register_redelivery(session, path: Path, quarantine_dir: Path) -> DeliveryResult:
    """Remove a re-delivered copy of an installed calibration file, or quarantine it if it differs.

    A quarantined re-delivery is catalogued as ``{name} (re-delivery N)`` with the reason; the
    installed file keeps serving.
    """
    installed = session.scalars(
        select(ProductFile)
        .join(CalibrationDelivery, CalibrationDelivery.file_id == ProductFile.id)
        .where(CalibrationDelivery.name == path.name)
    ).one()
    if sha256_of(path) == installed.sha256:
        os.unlink(path)
        return DeliveryResult(path.name, "duplicate", "identical to the installed file: removed")
    count = session.scalar(select(func.count()).where(CalibrationDelivery.name.like(f"{path.name} (re-delivery %)")))
    name = f"{path.name} (re-delivery {count + 1})"
    quarantine(path, quarantine_dir, f"{path.name}: {REDELIVERED_REASON}")
    session.add(CalibrationDelivery(name=name, state="quarantined", reason=REDELIVERED_REASON))
    return DeliveryResult(name, "quarantined", REDELIVERED_REASON)


def delivery_partition(result: DeliveryResult) -> str:
    """Return the hourly partition a delivery is dated in (the first partition for earlier dates)."""
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
        if result.state in ("quarantined", "duplicate"):
            continue
        kind = kind_for_code(result.code, result.level)
        version = hashlib.sha256(result.sha256.encode()).hexdigest()[:24]
        partitions = {**{delivery_partition(result): []}, **result.affected}
        for partition, products in sorted(partitions.items()):
            events.append(
                dg.AssetObservation(
                    asset_key=calibration_key(kind.name, result.observatory),
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
    """Build the calibration delivery sensor, evaluated every ``interval_seconds``."""

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
