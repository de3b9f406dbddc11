"""What every product level shares: fingerprints, catalogue rows with lineage, per-frame processing.

A product is made once per set of inputs: its fingerprint is a digest of everything it is made from
(code version, file version, input digests); a product whose catalogued fingerprint equals the new
one, and whose file is still there, is not made again.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from punchpipe_assets.calibration.select import InstalledCalibration, installed_calibration
from punchpipe_assets.cameras import Camera
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import FileRelationship, ProductFailure, ProductFile, utcnow

if TYPE_CHECKING:
    from ndcube import NDCube


@dataclass
class FrameOutcome:
    """What happened to one Level 0 frame."""

    level0: str
    status: str  # made | unchanged | failed | no_calibration
    reason: str | None = None
    path: str | None = None
    sha256: str | None = None
    calibration: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # made, but with something left out (and why)


def product_fingerprint(*parts: object) -> str:
    """SHA-256 of everything a product is made from (code version, file version, input digests).

    A product whose catalogued fingerprint equals the new one is not made again.
    """
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def describe_file(product: ProductFile) -> dict:
    """Describe an input file as outcomes and metadata list it.

    ``origin`` says whether the pipeline made it (``pipeline``) or it was delivered (``delivered``:
    calibration files and bootstrap models).
    """
    return {
        "file": Path(product.path).name,
        "code": product.file_type,
        "version": product.file_version,
        "sha256": product.sha256,
        "origin": "pipeline" if product.state == "created" else "delivered",
    }


def existing_product(
    session: Session, code: str, obs: str, date_obs: datetime, version: str, level: str = "1"
) -> ProductFile | None:
    """Find the catalogued product of a level, code, camera, DATE-OBS and file version, if any."""
    return session.scalars(
        select(ProductFile).where(
            ProductFile.level == level,
            ProductFile.file_type == code,
            ProductFile.observatory == obs,
            ProductFile.date_obs == date_obs,
            ProductFile.file_version == version,
        )
    ).first()


def catalog_product(
    session: Session,
    existing: ProductFile | None,
    *,
    code: str,
    obs: str,
    date_obs: datetime,
    file_version: str,
    path: str,
    sha256: str,
    fingerprint: str,
    parents: Sequence[ProductFile],
    acquisition_time: datetime | None = None,
    partition_key: str | None = None,
    run_id: str | None = None,
    level: str = "1",
) -> ProductFile:
    """Record a product and replace its lineage rows by one per input file.

    ``path`` is relative to the archive root (``ArchiveResource.relative``).
    """
    product = existing or ProductFile(
        level=level, file_type=code, observatory=obs, date_obs=date_obs, file_version=file_version
    )
    product.acquisition_time, product.path, product.sha256 = acquisition_time, path, sha256
    product.fingerprint, product.state, product.partition_key = fingerprint, "created", partition_key
    product.dagster_run_id, product.date_created = run_id, utcnow()
    session.add(product)
    session.flush()
    session.execute(delete(FileRelationship).where(FileRelationship.child_id == product.id))
    session.add_all([FileRelationship(parent_id=parent.id, child_id=product.id) for parent in parents])
    return product


def window_products(
    session: Session, level: str, obs: str, codes: Sequence[str], start: datetime, end: datetime
) -> list[ProductFile]:
    """Products of a level, camera and codes acquired in ``[start, end)``, by DATE-OBS."""
    return list(
        session.scalars(
            select(ProductFile)
            .where(
                ProductFile.level == level,
                ProductFile.observatory == obs,
                ProductFile.file_type.in_(codes),
                ProductFile.acquisition_time >= start,
                ProductFile.acquisition_time < end,
            )
            .order_by(ProductFile.date_obs)
        )
    )


def record_outcome(
    session: Session,
    input_file: ProductFile,
    level: str,
    code: str,
    status: str,
    reason: str | None,
    partition_key: str | None = None,
    run_id: str | None = None,
) -> None:
    """Keep the ``failures`` table in step with what happened to the product of one input file.

    ``made``/``unchanged`` clear any failure recorded for it; ``failed``, ``no_calibration`` and
    ``refused`` record (or update) the failure with its reason.
    """
    existing = session.scalars(
        select(ProductFailure).where(
            ProductFailure.input_id == input_file.id,
            ProductFailure.level == level,
            ProductFailure.product_code == code,
        )
    ).first()
    if status in ("made", "unchanged"):
        if existing is not None:
            session.delete(existing)
        return
    failure = existing or ProductFailure(input_id=input_file.id, level=level, product_code=code)
    failure.status, failure.reason = status, (reason or status)[:4000]
    failure.partition_key, failure.dagster_run_id, failure.recorded_at = partition_key, run_id, utcnow()
    session.add(failure)


class FrameProcessor:
    """Makes one product per input frame of a camera, window by window.

    Subclasses set ``level``, pick the input frames (``frames``) and make each product (``process_frame``, which
    ends in ``make_product``).

    Parameters
    ----------
    session
        Catalog session (the caller commits).
    archive
        Where files are written.
    file_version
        Version of the products.
    run_id
        The Dagster run, recorded with each product.

    """

    #: The level of the products made.
    level = "1"

    def __init__(
        self, session: Session, archive: ArchiveResource, file_version: str = "1", run_id: str | None = None
    ) -> None:
        self.session, self.archive, self.file_version, self.run_id = session, archive, file_version, run_id
        self._installed: dict[str, InstalledCalibration] = {}

    def installed(self, obs: str) -> InstalledCalibration:
        """Return the camera's installed calibration files, read from the catalog once per processor."""
        if obs not in self._installed:
            self._installed[obs] = installed_calibration(self.session, obs, self.archive)
        return self._installed[obs]

    def frames(self, camera: Camera, start: datetime, end: datetime) -> list[ProductFile]:
        """Input frames of a camera acquired in ``[start, end)``."""
        raise NotImplementedError

    def process_frame(self, frame: ProductFile, partition_key: str | None = None) -> FrameOutcome:
        """Make the product of one input frame, unless its inputs did not change."""
        raise NotImplementedError

    def product_code(self, frame: ProductFile) -> str:
        """Return the code of the product made from an input frame."""
        raise NotImplementedError

    def process_window(
        self, camera: Camera, start: datetime, end: datetime, partition_key: str | None = None
    ) -> list[FrameOutcome]:
        """Make or confirm the product of every input frame in the window.

        A frame that fails is recorded with its reason and does not stop the others.
        """
        outcomes = []
        for frame in self.frames(camera, start, end):
            outcome = self.process_frame(frame, partition_key)
            record_outcome(
                self.session,
                frame,
                self.level,
                self.product_code(frame),
                outcome.status,
                outcome.reason,
                partition_key,
                self.run_id,
            )
            outcomes.append(outcome)
        return outcomes

    def make_product(
        self,
        outcome: FrameOutcome,
        frame: ProductFile,
        code: str,
        fingerprint: str,
        parents: Sequence[ProductFile],
        make_cube: Callable[[], NDCube],
        partition_key: str | None = None,
    ) -> FrameOutcome:
        """Write and catalogue the product of a frame, unless the catalogued one is up to date.

        Parameters
        ----------
        outcome
            The frame's outcome, updated and returned.
        frame
            The input frame: the product takes its camera, DATE-OBS and acquisition time.
        code
            Product code.
        fingerprint
            ``product_fingerprint`` of everything the product is made from.
        parents
            Every input file, recorded as lineage.
        make_cube
            Runs punchbowl; an exception fails the frame with its reason.
        partition_key
            The partition, recorded with the product.

        Returns
        -------
        FrameOutcome
            ``unchanged`` (same fingerprint, file present), ``made``, or ``failed`` with the reason.

        """
        existing = existing_product(
            self.session, code, frame.observatory, frame.date_obs, self.file_version, self.level
        )
        if existing is not None and existing.fingerprint == fingerprint and self.archive.holds_product(existing):
            outcome.status, outcome.path, outcome.sha256 = "unchanged", existing.path, existing.sha256
            return outcome
        try:
            cube = make_cube()
            path = self.archive.product_path(self.level, code, frame.observatory, frame.date_obs, self.file_version)
            sha256 = self.archive.write_cube(cube, path, skip_stats=False)
        except Exception as error:  # noqa: BLE001 - a failed frame is recorded, the others go on
            outcome.reason = f"{type(error).__name__}: {error}\n" + traceback.format_exc(limit=3)
            return outcome
        catalog_product(
            self.session,
            existing,
            code=code,
            obs=frame.observatory,
            date_obs=frame.date_obs,
            file_version=self.file_version,
            path=self.archive.relative(path),
            sha256=sha256,
            fingerprint=fingerprint,
            parents=parents,
            acquisition_time=frame.acquisition_time,
            partition_key=partition_key,
            run_id=self.run_id,
            level=self.level,
        )
        outcome.status, outcome.path, outcome.sha256 = "made", self.archive.relative(path), sha256
        return outcome
