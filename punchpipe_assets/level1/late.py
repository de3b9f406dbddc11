"""Late (``PM PZ PP CR``) and quick (``QR``) Level 1 of the WFI cameras: early frames minus stray light.

The science is punchbowl's ``level1.flow.level1_late_core_flow``; this module selects the two
models and the mask, skips products whose inputs did not change, and records every input as
lineage. Late products take the two models bracketing the frame; quick products (``QR``) are made
from clear ``XR`` frames of WFI only (``SCIENCE_LEVEL1_QUICK_INPUT_TYPE_CODES``,
``observatory != "4"``); NFI's quick product (``QN``) is made at level Q from ``XR`` directly. The
WFI polarized middle stage (``level1_middle_core_flow``, dynamic stray light ``T?`` -> ``Y?``)
runs only when dynamic stray-light models exist. This pipeline makes none, so it is skipped and
the late stage reads ``XM XZ XP`` where the control segment reads ``YM YZ YP``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from punchpipe_assets.calibration.kinds import STRAY_LIGHT_KIND
from punchpipe_assets.calibration.select import (
    CalibrationCandidate,
    ModelPairs,
    catalogued_models,
    select_calibration,
    select_latest_two,
    select_mask,
    select_models,
)
from punchpipe_assets.cameras import Camera
from punchpipe_assets.products import FrameOutcome, FrameProcessor, describe_file, product_fingerprint, window_products
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import ProductFile

# Bumped whenever the way a product is made changes; part of every product's fingerprint.
LEVEL1_LATE_CODE_VERSION = "level1-late-v1"
LEVEL1_QUICK_CODE_VERSION = "level1-quick-v1"
EARLY_CODES = ("XM", "XZ", "XP", "XR")


def late_code(early_code: str, quick: bool = False) -> str:
    """Return the product code made from an early code: ``XM`` -> ``PM``, ``XR`` -> ``CR`` (quick: ``QR``)."""
    polarization = early_code[1]
    if quick:
        return "Q" + polarization
    return ("C" if polarization == "R" else "P") + polarization


class Level1LateProcessor(FrameProcessor):
    """Makes the late (or quick) Level 1 products of one camera, window by window.

    Parameters
    ----------
    session, archive, file_version, run_id
        As for ``FrameProcessor``.
    quick
        Make quick-look ``QR`` products (clear frames only, the two newest models not after the
        frame, from days before the frame's day) instead of ``PM PZ PP CR`` (the two bracketing models).

    """

    def __init__(
        self,
        session: Session,
        archive: ArchiveResource,
        file_version: str = "1",
        run_id: str | None = None,
        quick: bool = False,
    ) -> None:
        super().__init__(session, archive, file_version, run_id)
        self.quick = quick
        self.code_version = LEVEL1_QUICK_CODE_VERSION if quick else LEVEL1_LATE_CODE_VERSION
        self._models: dict[tuple[str, str], list[tuple[CalibrationCandidate, ProductFile]]] = {}

    def frames(self, camera: Camera, start: datetime, end: datetime) -> list[ProductFile]:
        """Early frames of a camera acquired in ``[start, end)`` (clear only for quick-look)."""
        return window_products(self.session, "1", camera.obs, ("XR",) if self.quick else EARLY_CODES, start, end)

    def models(self, obs: str, code: str) -> ModelPairs:
        """Catalogued stray-light models of a camera and code (the pipeline's and bootstrap ones)."""
        if (obs, code) not in self._models:
            self._models[(obs, code)] = catalogued_models(self.session, "1", code, obs)
        return self._models[(obs, code)]

    def select_models(self, frame: ProductFile) -> tuple[list[ProductFile], str | None]:
        """Select the two models for a frame, or return ``[]`` and the reason there are none.

        The pipeline's own models first; bootstrap models only where those do not give two.
        """
        code = STRAY_LIGHT_KIND.code_for(frame.file_type)
        pairs = self.models(frame.observatory, code)
        if self.quick:
            # Only models of days before the frame's day: those exist in near real time, and they
            # are the partitions the quick asset depends on.
            day = datetime(frame.date_obs.year, frame.date_obs.month, frame.date_obs.day)
            pairs = [(c, p) for c, p in pairs if c.date_obs < day]
            chosen = select_models(pairs, frame.date_obs, select_latest_two)
            missing = f"fewer than two {code}{frame.observatory} models of the days before {day:%Y-%m-%d}"
        else:
            chosen = select_models(pairs, frame.date_obs, lambda c, when: select_calibration(c, when, bracketing=True))
            before = [p for _, p in pairs if p.date_obs <= frame.date_obs]
            side = "after" if before else "at or before"
            missing = f"no {code}{frame.observatory} model {side} {frame.date_obs:%Y-%m-%dT%H:%M:%S}"
        if len(chosen) < 2:
            return [], missing
        return chosen, None

    def product_code(self, frame: ProductFile) -> str:
        """Return the late (``PM PZ PP CR``) or quick (``QR``) code of an early frame."""
        return late_code(frame.file_type, self.quick)

    def process_frame(self, frame: ProductFile, partition_key: str | None = None) -> FrameOutcome:
        """Make the product of one early frame, unless its inputs did not change."""
        outcome = FrameOutcome(Path(frame.path).name, "failed")
        models, reason = self.select_models(frame)
        if not models:
            outcome.status, outcome.reason = "no_calibration", reason
            return outcome
        mask = select_mask(self.session, frame.observatory, frame.date_obs, self.installed(frame.observatory))
        calibration_rows = [*models, *([mask] if mask is not None else [])]
        outcome.calibration = [describe_file(p) for p in calibration_rows]
        fingerprint = product_fingerprint(
            self.code_version,
            self.file_version,
            frame.sha256,
            [p.sha256 for p in models],
            mask.sha256 if mask is not None else None,
        )
        return self.make_product(
            outcome,
            frame,
            code=self.product_code(frame),
            fingerprint=fingerprint,
            parents=[frame, *calibration_rows],
            make_cube=lambda: run_late_flow(
                self.archive.absolute(frame.path),
                self.archive.absolute(models[0].path),
                self.archive.absolute(models[1].path),
                self.archive.absolute(mask.path) if mask is not None else None,
                self.quick,
            ),
            partition_key=partition_key,
        )


def run_late_flow(
    early_path: str, before_path: str, after_path: str, mask_path: str | None = None, quick: bool = False
):
    """One call of punchbowl's ``level1_late_core_flow`` (``output_as_Q_file`` for quick-look).

    Models are passed as paths, as punchbowl requires; the mask as its packed ``.bin`` file.
    """
    from punchbowl.level1.flow import level1_late_core_flow

    [cube] = level1_late_core_flow(
        input_data=[str(early_path)],
        stray_light_before_path=str(before_path),
        stray_light_after_path=str(after_path),
        mask_path=str(Path(mask_path).with_suffix(".bin")) if mask_path else None,
        output_as_Q_file=quick,
    )
    return cube
