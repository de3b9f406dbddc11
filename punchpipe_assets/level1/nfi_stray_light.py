"""Level 1 NFI dynamic stray light: early clear NFI frames (``XR4``) to ``ZR4``.

The science is punchbowl's ``level1.flow.level1_nfi_core_flow`` (``remove_nfi_stray_light``), one
frame per call, as the control segment's ``level1_nfi_dsl`` flow runs it (input ``XR`` of
observatory 4, output ``ZR``, no calibration file). This module picks the frames, passes the
configured arguments (``level1.nfi_stray_light``), skips products whose frame, arguments and code
did not change, and records the early frame as lineage.

punchbowl's stray-light kernels are placed in flight pixels whatever the frame size (centre
(1009, 1029) / ``bin_factor``, 130 binned pixels out, 87.7 binned pixels in radius, arguments
``remove_nfi_stray_light`` does not pass on): a kernel that misses the binned frame makes
punchbowl fail with an ``IndexError``. ``kernels_miss_frame`` says so beforehand, in words;
frames smaller than about 1200 px (bin factor 4) cannot be processed.
"""

from __future__ import annotations

import inspect
import math
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from punchpipe_assets.cameras import Camera
from punchpipe_assets.config_level1 import NfiStrayLightSettings
from punchpipe_assets.products import FrameOutcome, FrameProcessor, product_fingerprint, window_products
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import ProductFile

# Bumped whenever the way a product is made changes; part of every product's fingerprint.
LEVEL1_NFI_STRAY_LIGHT_CODE_VERSION = "level1-nfi-stray-light-v1"
#: The control segment's input and output codes (``SCIENCE_LEVEL1_NFI_DSL_*_TYPE_CODES``).
NFI_DSL_INPUT_CODES = ("XR",)
NFI_DSL_OUTPUT_CODE = "ZR"


def kernels_miss_frame(size: int, settings: NfiStrayLightSettings) -> str | None:
    """Return why punchbowl's stray-light kernels miss a ``size``-px frame, or None when all touch it.

    Reads the kernel geometry from the defaults of punchbowl's ``generate_nfi_forward_matrices``.
    """
    from punchbowl.level1.nfi_modules.fwdmats import generate_nfi_forward_matrices

    defaults = {k: p.default for k, p in inspect.signature(generate_nfi_forward_matrices).parameters.items()}
    binned = size / settings.bin_factor
    cx, cy = defaults["cx"] / settings.bin_factor, defaults["cy"] / settings.bin_factor
    radius, distance = defaults["radial_size"] / 2, defaults["elon_abs"]
    count = settings.fwd_mat_nstray_kernels or round(binned)
    for theta in (2 * math.pi * i / count for i in range(count)):
        x, y = cx + distance * math.cos(theta), cy + distance * math.sin(theta)
        nearest_x, nearest_y = min(max(x, 0), binned - 1), min(max(y, 0), binned - 1)
        if math.hypot(x - nearest_x, y - nearest_y) >= radius:
            return (
                f"punchbowl's stray-light kernel at {math.degrees(theta):.0f} deg (flight geometry, "
                f"centre ({x:.0f}, {y:.0f}) binned px, radius {radius:.1f}) misses the {binned:.0f}-px binned "
                f"frame of a {size}-px frame: remove_nfi_stray_light needs a larger frame"
            )
    return None


class Level1NfiStrayLightProcessor(FrameProcessor):
    """Makes the ``ZR4`` products of NFI, window by window, one punchbowl call per frame.

    Parameters
    ----------
    session, archive, file_version, run_id
        As for ``FrameProcessor``.
    settings
        The arguments of ``remove_nfi_stray_light`` (``level1.nfi_stray_light``).

    """

    def __init__(
        self,
        session: Session,
        archive: ArchiveResource,
        settings: NfiStrayLightSettings,
        file_version: str = "1",
        run_id: str | None = None,
    ) -> None:
        super().__init__(session, archive, file_version, run_id)
        self.settings = settings

    def frames(self, camera: Camera, start: datetime, end: datetime) -> list[ProductFile]:
        """Early clear frames of the camera acquired in ``[start, end)``."""
        return window_products(self.session, "1", camera.obs, NFI_DSL_INPUT_CODES, start, end)

    def product_code(self, frame: ProductFile) -> str:
        """``XR`` -> ``ZR``, as punchbowl's ``level1_nfi_core_flow`` names its output."""
        return "Z" + frame.file_type[1:]

    def process_frame(self, frame: ProductFile, partition_key: str | None = None) -> FrameOutcome:
        """Make the ``ZR`` product of one early frame, unless its frame and arguments did not change."""
        outcome = FrameOutcome(Path(frame.path).name, "failed")
        fingerprint = product_fingerprint(
            LEVEL1_NFI_STRAY_LIGHT_CODE_VERSION, self.file_version, frame.sha256, self.settings.model_dump()
        )
        return self.make_product(
            outcome,
            frame,
            code=self.product_code(frame),
            fingerprint=fingerprint,
            parents=[frame],
            make_cube=lambda: run_nfi_stray_light_flow(self.archive.absolute(frame.path), self.settings),
            partition_key=partition_key,
        )


def run_nfi_stray_light_flow(early_path: str | Path, settings: NfiStrayLightSettings):
    """One call of punchbowl's ``level1_nfi_core_flow`` on one early NFI frame, with the configured arguments.

    Raises ``ValueError`` (with the reason) when punchbowl's kernels would miss the frame.
    """
    from astropy.io import fits
    from punchbowl.level1.flow import level1_nfi_core_flow

    size = int(fits.getheader(str(early_path), 1)["NAXIS1"])
    reason = kernels_miss_frame(size, settings)
    if reason:
        raise ValueError(reason)
    [cube] = level1_nfi_core_flow([str(early_path)], **settings.arguments(size))
    return cube
