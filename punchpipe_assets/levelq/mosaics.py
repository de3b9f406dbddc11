"""QuickPUNCH mosaics ``CQM``: each slot's quick Level 1 ``QR1-3`` merged by ``levelq_CQM_core_flow``.

Grouped as Level 2 clear groups are (one frame per WFI camera per cadence slot, complete at 3),
from quick Level 1 instead of late Level 1; an incomplete group waits ``levelq.incomplete_wait_hours``
(forecasters cannot wait days), then is made from what exists, flagged. No masks (as the control
segment in service); the alphas file by the selection rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from punchpipe_assets.level2.grouping import Group
from punchpipe_assets.level2.mosaics import GroupProcessor, reduced_trefoil
from punchpipe_assets.resources.catalog import ProductFile

# Bumped whenever the way a CQM is made changes; part of its fingerprint.
LEVELQ_CQM_CODE_VERSION = "levelq-cqm-v1"


def run_cqm_flow(paths: Sequence[str], downsample: int, trim_edges_px: int, alphas: str | None) -> list:
    """One call of punchbowl's ``levelq_CQM_core_flow`` into the (reduced) trefoil frame."""
    from punchbowl.levelq.flow import levelq_CQM_core_flow

    wcs, shape = reduced_trefoil(downsample)
    return levelq_CQM_core_flow(
        [str(path) for path in paths],
        trim_edges_px=trim_edges_px,
        alphas_file=alphas,
        trefoil_wcs=wcs.deepcopy(),
        trefoil_shape=shape,
    )


class QuickMosaicProcessor(GroupProcessor):
    """Makes the ``CQM`` of every ready group of quick Level 1 frames of a window."""

    level = "Q"
    code_version = LEVELQ_CQM_CODE_VERSION
    kinds = ("clear",)
    quick = True

    @property
    def wait(self) -> timedelta:
        """How long an incomplete group waits (hours, not Level 2's days)."""
        return timedelta(hours=self.config.levelq.incomplete_wait_hours)

    def usable(self, group: Group) -> dict[tuple[str, str], ProductFile]:
        """Every present frame."""
        return dict(group.frames)

    def settings_fingerprint(self) -> dict:
        """Return the settings a CQM depends on."""
        return self.config.level2.model_dump(include={"trefoil_downsample", "trim_edges_px"})

    def product_codes(self, kind: str) -> tuple[str, ...]:
        """Return the codes a group makes: a CQM (``TYPECODE`` ``CQ``, observatory ``M``)."""
        return ("CQ",)

    def calibration(self, frames: Sequence[ProductFile], when) -> list[ProductFile | None]:
        """Return the alphas file only (QuickPUNCH applies no masks)."""
        return [self.alphas(when)]

    def make_cubes(self, kind: str, frames: Sequence[ProductFile], calibration: Sequence[ProductFile | None]) -> list:
        """Run punchbowl's CQM flow on one group."""
        alphas = calibration[-1]
        return run_cqm_flow(
            [self.archive.absolute(f.path) for f in frames],
            self.config.level2.trefoil_downsample,
            self.config.level2.trim_edges_px,
            str(self.archive.absolute(alphas.path)) if alphas is not None else None,
        )
