"""QuickPUNCH ``QAM``: 32-minute averages of the QuickPUNCH CTM, by punchbowl's ``levelq_QAM_core_flow``.

Complete at 4 CTM (one clear mosaic every 8 minutes); an incomplete bin waits
``levelq.qam_wait_hours`` after its end, then is made from what exists, flagged. The control
segment in service checks for an existing ``CT`` instead of ``QA`` before making one (so it never
makes a second bin); here each bin's product is found by its time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from punchpipe_assets.bins import BinAverager
from punchpipe_assets.resources.catalog import ProductFile

# Bumped whenever the way a QAM is made changes; part of its fingerprint.
LEVELQ_QAM_CODE_VERSION = "levelq-qam-v1"


def run_qam_flow(paths: list[str], reference_time: datetime):
    """One call of punchbowl's ``levelq_QAM_core_flow`` with the bin's centre as reference time."""
    from punchbowl.levelq.flow import levelq_QAM_core_flow

    [cube] = levelq_QAM_core_flow(list(paths), reference_time=reference_time)
    return cube


class QuickAverager(BinAverager):
    """Makes the QAM of every 32-minute bin of a day that has CTM."""

    level, code, obs = "Q", "QA", "M"
    code_version = LEVELQ_QAM_CODE_VERSION
    input_level, input_codes, input_obs = "Q", ("CT",), "M"
    complete_count = 4

    @property
    def wait(self) -> timedelta:
        """``levelq.qam_wait_hours``."""
        return timedelta(hours=self.config.levelq.qam_wait_hours)

    def make_cube(self, inputs: list[ProductFile], reference_time: datetime):
        """Run punchbowl's QAM flow on the bin's CTM."""
        return run_qam_flow([str(self.archive.absolute(p.path)) for p in inputs], reference_time)
