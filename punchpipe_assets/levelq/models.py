"""QuickPUNCH F-corona models ``CFM``: on a fixed grid from midnight, from the CQM mosaics of the past only.

The model of grid time ``t`` is built by punchbowl's ``construct_f_corona_model(is_quickpunch=True)``
from the ``CQM`` of the ``levelq.model_window_hours`` before ``t`` (forecasters need it at ``t``,
not days later), at least ``model_min_inputs``; above ``model_max_inputs`` a seeded choice (the
control segment in service shuffles without a seed, so the same inputs gave different models).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from punchpipe_assets.fixes import f_corona_in_frame, preload_f_corona_in_forkserver
from punchpipe_assets.grid_models import GridModelBuilder, choose_inputs, window_inputs
from punchpipe_assets.resources.catalog import ProductFile

# Bumped whenever the way a CFM is made changes; part of its fingerprint.
LEVELQ_CFM_CODE_VERSION = "levelq-cfm-v1"
#: Worker processes of punchbowl's F-corona builder (within the large-memory pool's budget).
F_CORONA_WORKERS = 2


def run_quick_f_corona(paths: list[str], reference_time: datetime, downsample: int):
    """One call of punchbowl's ``construct_f_corona_model`` for QuickPUNCH (clear, past inputs)."""
    from punchbowl.level3.f_corona_model import construct_f_corona_model

    preload_f_corona_in_forkserver()
    with f_corona_in_frame(downsample):
        [cube] = construct_f_corona_model(
            list(paths),  # punchbowl sorts the list in place
            reference_time=reference_time.strftime("%Y-%m-%dT%H:%M:%S"),
            num_workers=F_CORONA_WORKERS,
            num_loaders=F_CORONA_WORKERS,
            polarized=False,
            is_quickpunch=True,
        )
    return cube


class QuickFCoronaBuilder(GridModelBuilder):
    """Builds the CFM of one grid time from the CQM of the window before it."""

    level = "Q"
    code = "CF"
    obs = "M"
    code_version = LEVELQ_CFM_CODE_VERSION

    def candidates(self, reference_time: datetime) -> list[ProductFile]:
        """Return the CQM of the window before the grid time."""
        window = timedelta(hours=self.config.levelq.model_window_hours)
        return window_inputs(self.session, "Q", ["CQ"], "M", reference_time - window, reference_time)

    def choose(self, candidates: list[ProductFile], reference_time: datetime) -> tuple[list[ProductFile], str | None]:
        """At least ``model_min_inputs``, at most ``model_max_inputs`` (seeded)."""
        settings = self.config.levelq
        inputs, refusal = choose_inputs(
            candidates, settings.model_min_inputs, settings.model_max_inputs, settings.model_seed, reference_time
        )
        if refusal is not None:
            refusal = (
                f"CFM {reference_time:%Y-%m-%dT%H:%M}: {refusal} (CQM of the {settings.model_window_hours:g} h before)"
            )
        return inputs, refusal

    def settings_fingerprint(self) -> object:
        """Return the settings a CFM depends on."""
        return [self.config.levelq.model_dump(), self.config.level2.trefoil_downsample]

    def make_cube(self, inputs: list[ProductFile], reference_time: datetime):
        """Run punchbowl's F-corona builder."""
        paths = [str(self.archive.absolute(p.path)) for p in inputs]
        return run_quick_f_corona(paths, reference_time, self.config.level2.trefoil_downsample)
