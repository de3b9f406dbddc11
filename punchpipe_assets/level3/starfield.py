"""Level 3 starfield models ``PSM``/``CSM``: on a fixed grid (of days by default), from the ``PIM``/``CIM`` around it.

The model of grid time ``t`` (every ``level3.starfield.spacing_hours`` from the epoch's midnight)
is built by punchbowl's ``generate_starfield_background`` from the ``PIM`` (``PSM``) or ``CIM``
(``CSM``) of the ``half_window_hours`` before ``t`` and from ``t`` on, outliers left out, at least
``min_inputs_per_half`` a side and at most ``max_inputs_per_half`` (a seeded choice). Too few:
refused with the reason (catalog ``model_refusals``), tried again when more arrive. The rest of
the life of a grid model (a delivered model holding its name, unchanged inputs) is the F-corona
builder's, which this one reuses.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from punchpipe_assets.config import PipelineConfig, StarfieldSettings
from punchpipe_assets.level3.fcorona import FCoronaBuilder, choose_window_inputs
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import ProductFile

# Bumped whenever the way a Level 3 starfield model is made changes; part of its fingerprint.
LEVEL3_STARFIELD_CODE_VERSION = "level3-starfield-v1"
#: Model code and input (``PIM``/``CIM``) code of each polarization.
STARFIELD_CODES = {"polarized": "PS", "clear": "CS"}
STARFIELD_INPUT_CODES = {"polarized": "PI", "clear": "CI"}


def run_starfield_model(paths: list[str], reference_time: datetime, polarized: bool, settings: StarfieldSettings):
    """One call of punchbowl's ``generate_starfield_background`` on ``PIM`` or ``CIM`` files."""
    from punchbowl.level3.stellar import generate_starfield_background

    [cube] = generate_starfield_background(
        sorted(paths),
        map_scale=settings.map_scale,
        target_mem_usage=settings.target_mem_usage,
        n_procs=settings.num_workers,
        reference_time=reference_time,
        is_polarized=polarized,
    )
    return cube


def subtracted_between(session: Session, code: str, start: datetime, end: datetime) -> list[ProductFile]:
    """``PIM`` (``PI``) or ``CIM`` (``CI``) with DATE-OBS in ``[start, end)``, outliers left out, by DATE-OBS."""
    return list(
        session.scalars(
            select(ProductFile)
            .where(
                ProductFile.level == "3",
                ProductFile.file_type == code,
                ProductFile.observatory == "M",
                ProductFile.state == "created",
                ProductFile.outlier.is_(False),
                ProductFile.date_obs >= start,
                ProductFile.date_obs < end,
            )
            .order_by(ProductFile.date_obs, ProductFile.id)
        )
    )


class StarfieldBuilder(FCoronaBuilder):
    """Builds the ``PSM`` or ``CSM`` of one grid time from the ``PIM``/``CIM`` around it.

    Parameters
    ----------
    session, archive, config, run_id
        As ``GridModelBuilder``.
    polarization
        ``polarized`` (``PSM`` from ``PIM``) or ``clear`` (``CSM`` from ``CIM``).

    """

    code_version = LEVEL3_STARFIELD_CODE_VERSION

    def __init__(
        self,
        session: Session,
        archive: ArchiveResource,
        config: PipelineConfig,
        polarization: str,
        run_id: str | None = None,
    ) -> None:
        self.session, self.archive, self.config, self.run_id = session, archive, config, run_id
        self.file_version = config.level0.file_version
        self.polarization = polarization
        self.code, self.obs = STARFIELD_CODES[polarization], "M"
        self.input_code = STARFIELD_INPUT_CODES[polarization]
        self.settings = config.level3.starfield

    @property
    def half_window(self) -> timedelta:
        """How far before and after the grid time ``PIM``/``CIM`` are taken."""
        return timedelta(hours=self.settings.half_window_hours)

    def candidates(self, reference_time: datetime) -> list[ProductFile]:
        """Return the ``PIM``/``CIM`` of the window around the grid time."""
        return subtracted_between(
            self.session, self.input_code, reference_time - self.half_window, reference_time + self.half_window
        )

    def choose(self, candidates: list[ProductFile], reference_time: datetime) -> tuple[list[ProductFile], str | None]:
        """At least ``min_inputs_per_half`` on each side of the grid time, at most ``max_inputs_per_half`` (seeded)."""
        before = [p for p in candidates if p.date_obs < reference_time]
        after = [p for p in candidates if p.date_obs >= reference_time]
        noun = f"{self.input_code}M"
        inputs, refusal = choose_window_inputs(before, after, self.settings, reference_time, noun)
        if refusal is not None:
            refusal = (
                f"{self.code}M {reference_time:%Y-%m-%dT%H:%M}: {refusal} "
                f"({noun} within {self.settings.half_window_hours:g} h)"
            )
        return inputs, refusal

    def settings_fingerprint(self) -> object:
        """Return the settings a model depends on (not the worker count nor the memory target)."""
        return self.settings.model_dump(exclude={"num_workers", "target_mem_usage"})

    def make_cube(self, inputs: list[ProductFile], reference_time: datetime):
        """Run punchbowl's starfield builder."""
        paths = [str(self.archive.absolute(p.path)) for p in inputs]
        return run_starfield_model(paths, reference_time, self.polarization == "polarized", self.settings)
