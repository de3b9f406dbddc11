"""Level 1 early calibration: Level 0 frames and selected calibration files to ``X?`` products.

The science is punchbowl's ``level1_early_core_flow``; this module selects the calibration files
by the operational rule (``select_calibration``), picks despike neighbours, skips frames whose
inputs did not change, and records every input (Level 0 file and calibration file) as lineage.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from punchpipe_assets.calibration.select import early_flow_arguments, select_frame_calibration
from punchpipe_assets.cameras import Camera
from punchpipe_assets.products import (
    FrameOutcome,
    FrameProcessor,
    describe_file,
    product_fingerprint,
    window_products,
)
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import ProductFile

# Bumped whenever the way an early Level 1 file is made changes; part of every file's fingerprint.
LEVEL1_EARLY_CODE_VERSION = "level1-early-v1"
SCIENCE_CODES = ("PM", "PZ", "PP", "CR")
DESPIKE_WINDOW = timedelta(minutes=15)
DESPIKE_NEIGHBOURS = 6


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

    def product_code(self, frame: ProductFile) -> str:
        """``X`` and the frame's polarization: ``PM`` -> ``XM``, ``CR`` -> ``XR``."""
        return "X" + frame.file_type[1]

    def process_frame(self, frame: ProductFile, partition_key: str | None = None) -> FrameOutcome:
        """Make the early Level 1 product of one Level 0 frame, unless its inputs did not change."""
        outcome = FrameOutcome(Path(frame.path).name, "failed")
        selection, calibration_rows = select_frame_calibration(self.session, frame, self.installed(frame.observatory))
        outcome.calibration = [describe_file(p) for p in calibration_rows]
        if not calibration_rows:
            outcome.status, outcome.reason = "no_calibration", "no calibration file dated before the frame"
            return outcome
        candidates = self.despike_neighbours(frame)
        neighbours = [p for p in candidates if self.archive.holds_product(p)]
        outcome.warnings = [
            f"despike neighbour {Path(p.path).name} left out: missing or damaged in the archive"
            for p in candidates
            if p not in neighbours
        ]
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
            code=self.product_code(frame),
            fingerprint=fingerprint,
            parents=[frame, *calibration_rows],
            make_cube=lambda: run_early_flow(
                str(self.archive.absolute(frame.path)),
                [str(self.archive.absolute(p.path)) for p in neighbours],
                early_flow_arguments(selection),
                self.max_workers,
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
