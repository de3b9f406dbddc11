"""Level 1 early calibration: Level 0 frames and selected calibration files to ``X?`` products.

The science is punchbowl's ``level1_early_core_flow``; this module selects the calibration files
by the operational rule (``select_calibration``), picks despike neighbours, skips frames whose
inputs did not change, and records every input (Level 0 file and calibration file) as lineage.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

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


def _active_calibration(session: Session, obs: str) -> dict[str, list[tuple[CalibrationCandidate, ProductFile]]]:
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


def select_frame_calibration(
    session: Session, level0: ProductFile
) -> tuple[dict[str, list[CalibrationCandidate]], list[ProductFile]]:
    """Select every calibration file a Level 0 frame needs, by the operational rule.

    Returns
    -------
    tuple
        Kind name to the selected candidates, and the catalogue rows of all selected files.
    """
    available = _active_calibration(session, level0.observatory)
    selection: dict[str, list[CalibrationCandidate]] = {}
    rows: list[ProductFile] = []
    for kind_name, code in calibration_codes_for(level0.file_type, level0.observatory).items():
        kind = CALIBRATION_KINDS[kind_name]
        pairs = available.get(code, [])
        chosen = select_calibration([c for c, _ in pairs], level0.date_obs, kind.is_bracketing(level0.observatory))
        selection[kind_name] = chosen
        rows.extend(product for candidate, product in pairs if candidate in chosen)
    return selection, rows


class Level1EarlyProcessor:
    """Makes the early Level 1 products of one camera, window by window.

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
        self.session, self.archive, self.file_version = session, archive, file_version
        self.run_id, self.max_workers = run_id, max_workers

    def level0_frames(self, camera: Camera, start: datetime, end: datetime) -> list[ProductFile]:
        """Science Level 0 frames of a camera acquired in ``[start, end)``."""
        return list(
            self.session.scalars(
                select(ProductFile)
                .where(
                    ProductFile.level == "0",
                    ProductFile.observatory == camera.obs,
                    ProductFile.file_type.in_(SCIENCE_CODES),
                    ProductFile.acquisition_time >= start,
                    ProductFile.acquisition_time < end,
                )
                .order_by(ProductFile.date_obs)
            )
        )

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

    def process_window(
        self, camera: Camera, start: datetime, end: datetime, partition_key: str | None = None
    ) -> list[FrameOutcome]:
        """Make or confirm the early Level 1 product of every science frame in the window.

        A frame that fails is recorded with its reason and does not stop the others.
        """
        return [self.process_frame(level0, partition_key) for level0 in self.level0_frames(camera, start, end)]

    def process_frame(self, level0: ProductFile, partition_key: str | None = None) -> FrameOutcome:
        """Make the early Level 1 product of one Level 0 frame, unless its inputs did not change."""
        outcome = FrameOutcome(Path(level0.path).name, "failed")
        selection, calibration_rows = select_frame_calibration(self.session, level0)
        outcome.calibration = [
            {"file": Path(p.path).name, "code": p.file_type, "version": p.file_version, "sha256": p.sha256}
            for p in calibration_rows
        ]
        if not calibration_rows:
            outcome.status, outcome.reason = "no_calibration", "no calibration file dated before the frame"
            return outcome
        neighbours = self.despike_neighbours(level0)
        fingerprint = hashlib.sha256(
            json.dumps(
                [
                    LEVEL1_EARLY_CODE_VERSION,
                    self.file_version,
                    level0.sha256,
                    sorted(p.sha256 for p in calibration_rows),
                    sorted(p.sha256 for p in neighbours),
                ]
            ).encode()
        ).hexdigest()
        code = "X" + level0.file_type[1]
        existing = self.session.scalars(
            select(ProductFile).where(
                ProductFile.level == "1",
                ProductFile.file_type == code,
                ProductFile.observatory == level0.observatory,
                ProductFile.date_obs == level0.date_obs,
                ProductFile.file_version == self.file_version,
            )
        ).first()
        if existing is not None and existing.fingerprint == fingerprint and Path(existing.path).exists():
            outcome.status, outcome.path, outcome.sha256 = "unchanged", existing.path, existing.sha256
            return outcome
        try:
            cube = run_early_flow(
                level0.path, [p.path for p in neighbours], early_flow_arguments(selection), self.max_workers
            )
            path = self.archive.product_path("1", code, level0.observatory, level0.date_obs, self.file_version)
            sha256 = self.archive.write_cube(cube, path, skip_stats=False)
        except Exception as error:  # noqa: BLE001 - a failed frame is recorded, the others go on
            outcome.reason = f"{type(error).__name__}: {error}"
            outcome.reason += "\n" + traceback.format_exc(limit=3)
            return outcome
        product = existing or ProductFile(
            level="1",
            file_type=code,
            observatory=level0.observatory,
            date_obs=level0.date_obs,
            file_version=self.file_version,
        )
        product.acquisition_time, product.path, product.sha256 = level0.acquisition_time, str(path), sha256
        product.fingerprint, product.state, product.partition_key = fingerprint, "created", partition_key
        product.dagster_run_id, product.date_created = self.run_id, utcnow()
        self.session.add(product)
        self.session.flush()
        self.session.execute(delete(FileRelationship).where(FileRelationship.child_id == product.id))
        self.session.add_all(
            [FileRelationship(parent_id=parent.id, child_id=product.id) for parent in [level0, *calibration_rows]]
        )
        outcome.status, outcome.path, outcome.sha256 = "made", str(path), sha256
        return outcome


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
