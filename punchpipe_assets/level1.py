"""Level 1 early calibration: Level 0 frames and selected calibration files to ``X?`` products.

The science is punchbowl's ``level1_early_core_flow``; this module selects the calibration files
by the operational rule (``select_calibration``), picks despike neighbours, skips frames whose
inputs did not change, and records every input (Level 0 file and calibration file) as lineage.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from punchpipe_assets.calibration import (
    CALIBRATION_KINDS,
    CalibrationCandidate,
    calibration_codes_for,
    early_flow_arguments,
    select_calibration,
)
from punchpipe_assets.cameras import Camera
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import CalibrationDelivery, FileRelationship, ProductFile, utcnow

if TYPE_CHECKING:
    from ndcube import NDCube

# Bumped whenever the way an early Level 1 file is made changes; part of every file's fingerprint.
LEVEL1_EARLY_CODE_VERSION = "level1-early-v1"
SCIENCE_CODES = ("PM", "PZ", "PP", "CR")
DESPIKE_WINDOW = timedelta(minutes=15)
DESPIKE_NEIGHBOURS = 6


@dataclass
class FrameOutcome:
    """What happened to one Level 0 frame."""

    level0: str
    status: str  # made | unchanged | failed | no_calibration
    reason: str | None = None
    path: str | None = None
    sha256: str | None = None
    calibration: list[dict] = field(default_factory=list)


#: A camera's catalogued calibration files by product code, each as a candidate and its row.
InstalledCalibration = dict[str, list[tuple[CalibrationCandidate, ProductFile]]]


def installed_calibration(session: Session, obs: str) -> InstalledCalibration:
    """Installed, selectable calibration files of a camera by product code."""
    rows = session.execute(
        select(ProductFile)
        .join(CalibrationDelivery, CalibrationDelivery.file_id == ProductFile.id)
        .where(ProductFile.observatory == obs, CalibrationDelivery.state.in_(("active", "superseded")))
    ).scalars()
    by_code: dict[str, list[tuple[CalibrationCandidate, ProductFile]]] = {}
    for product in rows:
        candidate = CalibrationCandidate(
            Path(product.path), product.file_type, product.observatory, product.date_obs, product.file_version
        )
        by_code.setdefault(product.file_type, []).append((candidate, product))
    return by_code


def select_installed(
    pairs: list[tuple[CalibrationCandidate, ProductFile]], when: datetime, bracketing: bool
) -> tuple[list[CalibrationCandidate], list[ProductFile]]:
    """``select_calibration`` on catalogued files of one code: the chosen candidates and their rows, in order."""
    chosen = select_calibration([candidate for candidate, _ in pairs], when, bracketing)
    return chosen, [next(product for candidate, product in pairs if candidate == c) for c in chosen]


def select_frame_calibration(
    session: Session,
    level0: ProductFile,
    available: InstalledCalibration | None = None,
) -> tuple[dict[str, list[CalibrationCandidate]], list[ProductFile]]:
    """Select every calibration file a Level 0 frame needs, by the operational rule.

    ``available``: the camera's installed files, when the caller selects for many frames.

    Returns
    -------
    tuple
        Kind name to the selected candidates, and the catalogue rows of all selected files.
    """
    available = available if available is not None else installed_calibration(session, level0.observatory)
    selection: dict[str, list[CalibrationCandidate]] = {}
    rows: list[ProductFile] = []
    for kind_name, code in calibration_codes_for(level0.file_type, level0.observatory).items():
        bracketing = CALIBRATION_KINDS[kind_name].is_bracketing(level0.observatory)
        selection[kind_name], chosen_rows = select_installed(available.get(code, []), level0.date_obs, bracketing)
        rows.extend(chosen_rows)
    return selection, rows


def product_fingerprint(*parts: object) -> str:
    """SHA-256 of everything a product is made from (code version, file version, input digests).

    A product whose catalogued fingerprint equals the new one is not made again.
    """
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def describe_file(product: ProductFile) -> dict:
    """A calibration (or other input) file as ``FrameOutcome.calibration`` lists it."""
    return {
        "file": Path(product.path).name,
        "code": product.file_type,
        "version": product.file_version,
        "sha256": product.sha256,
    }


def existing_product(session: Session, code: str, obs: str, date_obs: datetime, version: str) -> ProductFile | None:
    """The catalogued Level 1 product of a code, camera, DATE-OBS and file version, if any."""
    return session.scalars(
        select(ProductFile).where(
            ProductFile.level == "1",
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
    path: Path,
    sha256: str,
    fingerprint: str,
    parents: Sequence[ProductFile],
    acquisition_time: datetime | None = None,
    partition_key: str | None = None,
    run_id: str | None = None,
) -> ProductFile:
    """Record a level 1 product and replace its lineage rows by one per input file."""
    product = existing or ProductFile(
        level="1", file_type=code, observatory=obs, date_obs=date_obs, file_version=file_version
    )
    product.acquisition_time, product.path, product.sha256 = acquisition_time, str(path), sha256
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


class FrameProcessor:
    """Makes one Level 1 product per input frame of a camera, window by window.

    Subclasses pick the input frames (``frames``) and make each product (``process_frame``, which
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

    def __init__(
        self, session: Session, archive: ArchiveResource, file_version: str = "1", run_id: str | None = None
    ) -> None:
        self.session, self.archive, self.file_version, self.run_id = session, archive, file_version, run_id
        self._installed: dict[str, InstalledCalibration] = {}

    def installed(self, obs: str) -> InstalledCalibration:
        """The camera's installed calibration files, read from the catalog once per processor."""
        if obs not in self._installed:
            self._installed[obs] = installed_calibration(self.session, obs)
        return self._installed[obs]

    def frames(self, camera: Camera, start: datetime, end: datetime) -> list[ProductFile]:
        """Input frames of a camera acquired in ``[start, end)``."""
        raise NotImplementedError

    def process_frame(self, frame: ProductFile, partition_key: str | None = None) -> FrameOutcome:
        """Make the product of one input frame, unless its inputs did not change."""
        raise NotImplementedError

    def process_window(
        self, camera: Camera, start: datetime, end: datetime, partition_key: str | None = None
    ) -> list[FrameOutcome]:
        """Make or confirm the product of every input frame in the window.

        A frame that fails is recorded with its reason and does not stop the others.
        """
        return [self.process_frame(frame, partition_key) for frame in self.frames(camera, start, end)]

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
        existing = existing_product(self.session, code, frame.observatory, frame.date_obs, self.file_version)
        if existing is not None and existing.fingerprint == fingerprint and Path(existing.path).exists():
            outcome.status, outcome.path, outcome.sha256 = "unchanged", existing.path, existing.sha256
            return outcome
        try:
            cube = make_cube()
            path = self.archive.product_path("1", code, frame.observatory, frame.date_obs, self.file_version)
            sha256 = self.archive.write_cube(cube, path, skip_stats=False)
        except Exception as error:  # noqa: BLE001 - a failed frame is recorded, the others go on
            outcome.reason = f"{type(error).__name__}: {error}\n" + traceback.format_exc(limit=3)
            return outcome
        catalog_product(
            self.session, existing, code=code, obs=frame.observatory, date_obs=frame.date_obs,
            file_version=self.file_version, path=path, sha256=sha256, fingerprint=fingerprint,
            parents=parents, acquisition_time=frame.acquisition_time,
            partition_key=partition_key, run_id=self.run_id,
        )
        outcome.status, outcome.path, outcome.sha256 = "made", str(path), sha256
        return outcome


class Level1EarlyProcessor(FrameProcessor):
    """Makes the early Level 1 products of one camera, window by window.

    Parameters
    ----------
    session, archive, file_version, run_id
        As for ``FrameProcessor``.
    max_workers
        Passed to ``level1_early_core_flow``.
    """

    def __init__(
        self,
        session: Session,
        archive: ArchiveResource,
        file_version: str = "1",
        run_id: str | None = None,
        max_workers: int = 2,
    ) -> None:
        super().__init__(session, archive, file_version, run_id)
        self.max_workers = max_workers

    def frames(self, camera: Camera, start: datetime, end: datetime) -> list[ProductFile]:
        """Science Level 0 frames of a camera acquired in ``[start, end)``."""
        return window_products(self.session, "0", camera.obs, SCIENCE_CODES, start, end)

    def despike_neighbours(self, level0: ProductFile) -> list[ProductFile]:
        """Frames of the same camera and product code within 15 minutes, without missing packets."""
        rows = self.session.scalars(
            select(ProductFile).where(
                ProductFile.level == "0",
                ProductFile.observatory == level0.observatory,
                ProductFile.file_type == level0.file_type,
                ProductFile.id != level0.id,
                ProductFile.bad_packets.is_(False),
                ProductFile.date_obs >= level0.date_obs - DESPIKE_WINDOW,
                ProductFile.date_obs <= level0.date_obs + DESPIKE_WINDOW,
            )
        ).all()
        return sorted(rows, key=lambda p: abs((p.date_obs - level0.date_obs).total_seconds()))[:DESPIKE_NEIGHBOURS]

    def process_frame(self, frame: ProductFile, partition_key: str | None = None) -> FrameOutcome:
        """Make the early Level 1 product of one Level 0 frame, unless its inputs did not change."""
        outcome = FrameOutcome(Path(frame.path).name, "failed")
        selection, calibration_rows = select_frame_calibration(self.session, frame, self.installed(frame.observatory))
        outcome.calibration = [describe_file(p) for p in calibration_rows]
        if not calibration_rows:
            outcome.status, outcome.reason = "no_calibration", "no calibration file dated before the frame"
            return outcome
        neighbours = self.despike_neighbours(frame)
        fingerprint = product_fingerprint(
            LEVEL1_EARLY_CODE_VERSION,
            self.file_version,
            frame.sha256,
            sorted(p.sha256 for p in calibration_rows),
            sorted(p.sha256 for p in neighbours),
        )
        return self.make_product(
            outcome,
            frame,
            code="X" + frame.file_type[1],
            fingerprint=fingerprint,
            parents=[frame, *calibration_rows],
            make_cube=lambda: run_early_flow(
                frame.path, [p.path for p in neighbours], early_flow_arguments(selection), self.max_workers
            ),
            partition_key=partition_key,
        )


def run_early_flow(level0_path: str, neighbour_paths: list[str], calibration_arguments: dict, max_workers: int = 2):
    """One call of punchbowl's ``level1_early_core_flow``, as the pipeline makes it.

    Alignment stays off (it would download star-index files); gains come from the Level 0 header.
    """
    from astropy.io import fits
    from punchbowl.level1.flow import level1_early_core_flow

    header = fits.getheader(level0_path, 1)
    [cube] = level1_early_core_flow(
        [level0_path],
        gain_bottom=float(header["GAINBTM"]),
        gain_top=float(header["GAINTOP"]),
        despike_neighbors=neighbour_paths or None,
        do_align=False,
        max_workers=max_workers,
        **calibration_arguments,
    )
    return cube
