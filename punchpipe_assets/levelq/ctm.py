"""QuickPUNCH ``CTM``: each CQM minus the two newest F-corona models (``CFM``) at or before it.

punchbowl's ``levelq_CTM_core_flow`` subtracts the models interpolated (here extrapolated) to the
mosaic's time. The pipeline's own CFM take precedence; bootstrap CFM (delivered with the
calibration set) serve until it has two. A CTM made with older models is remade when a newer
model is built (its inputs changed).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from punchpipe_assets.calibration.select import ModelPairs, catalogued_models, select_latest_two, select_models
from punchpipe_assets.cameras import Camera
from punchpipe_assets.products import FrameOutcome, FrameProcessor, describe_file, product_fingerprint
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import ProductFile

# Bumped whenever the way a QuickPUNCH CTM is made changes; part of its fingerprint.
LEVELQ_CTM_CODE_VERSION = "levelq-ctm-v1"


def run_quick_ctm_flow(cqm_path: str, before_path: str, after_path: str):
    """One call of punchbowl's ``levelq_CTM_core_flow``."""
    from punchbowl.levelq.flow import levelq_CTM_core_flow

    [cube] = levelq_CTM_core_flow([str(cqm_path)], str(before_path), str(after_path))
    return cube


class QuickCTMProcessor(FrameProcessor):
    """Makes the QuickPUNCH CTM of every CQM of a partition."""

    level = "Q"

    def __init__(
        self, session: Session, archive: ArchiveResource, file_version: str = "1", run_id: str | None = None
    ) -> None:
        super().__init__(session, archive, file_version, run_id)
        self._models: ModelPairs | None = None

    def frames(self, camera: Camera | None, start: datetime, end: datetime) -> list[ProductFile]:
        """Return the CQM whose DATE-OBS falls in ``[start, end)``."""
        return list(
            self.session.scalars(
                select(ProductFile)
                .where(
                    ProductFile.level == "Q",
                    ProductFile.file_type == "CQ",
                    ProductFile.state == "created",
                    ProductFile.date_obs >= start,
                    ProductFile.date_obs < end,
                )
                .order_by(ProductFile.date_obs)
            )
        )

    def product_code(self, frame: ProductFile) -> str:
        """Return the CTM code: a CQM gives a CTM."""
        return "CT"

    def models(self) -> ModelPairs:
        """Return the catalogued CFM (the pipeline's and bootstrap ones), read once."""
        if self._models is None:
            self._models = catalogued_models(self.session, "Q", "CF", "M")
        return self._models

    def process_frame(self, frame: ProductFile, partition_key: str | None = None) -> FrameOutcome:
        """Make the CTM of one CQM, unless its CQM and models did not change."""
        outcome = FrameOutcome(Path(frame.path).name, "failed")
        models = select_models(self.models(), frame.date_obs, select_latest_two)
        if not models:
            outcome.status = "no_calibration"
            outcome.reason = f"fewer than two CFM at or before {frame.date_obs:%Y-%m-%dT%H:%M:%S}"
            return outcome
        outcome.calibration = [describe_file(p) for p in models]
        fingerprint = product_fingerprint(
            LEVELQ_CTM_CODE_VERSION, self.file_version, frame.sha256, [p.sha256 for p in models]
        )
        return self.make_product(
            outcome,
            frame,
            code="CT",
            fingerprint=fingerprint,
            parents=[frame, *models],
            make_cube=lambda: run_quick_ctm_flow(
                self.archive.absolute(frame.path),
                self.archive.absolute(models[0].path),
                self.archive.absolute(models[1].path),
            ),
            partition_key=partition_key,
        )
