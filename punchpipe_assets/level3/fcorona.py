"""Level 3 F-corona models ``PF{n}``/``CF{n}``: per WFI camera, on a fixed grid, from the Level 2 layers around it.

The model of grid time ``t`` (every ``level3.fcorona.spacing_hours`` from the mission epoch's
midnight) of camera ``n`` is built by punchbowl's ``construct_f_corona_model`` from the camera's
Level 2 layers (``XP{n}`` for the polarized ``PF{n}``, ``XR{n}`` for the clear ``CF{n}``) of the
``half_window_hours`` before ``t`` and from ``t`` on, outliers left out, at least
``min_inputs_per_half`` on each side and at most ``max_inputs_per_half`` (a seeded choice: the
same inputs give the same model). Too few on either side: refused with the reason (recorded in
the catalog's ``model_refusals``), tried again when more layers arrive. The control segment in
service asks for strictly more than its minimum and reads its stride from another flow's section.

The NFI ``CFN`` (``NfiFCoronaBuilder``, settings ``level3.fcorona_nfi``) is made the same way from
the Level 2 ``CNN`` of the NFI PCA background, as the control segment's ``nfi`` models are.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from punchpipe_assets.cameras import CAMERA_BY_OBS, Camera
from punchpipe_assets.config import FCoronaSettings, PipelineConfig, StarfieldSettings
from punchpipe_assets.fixes import f_corona_in_frame, f_corona_in_nfi_frame, preload_f_corona_in_forkserver
from punchpipe_assets.grid_models import GridModelBuilder, ModelOutcome, choose_inputs
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import ModelRefusal, ProductFile, utcnow

# Bumped whenever the way a Level 3 F-corona model is made changes; part of its fingerprint.
LEVEL3_FCORONA_CODE_VERSION = "level3-fcorona-v1"
#: Model code and Level 2 layer code of each polarization.
MODEL_CODES = {"polarized": "PF", "clear": "CF"}
LAYER_CODES = {"polarized": "XP", "clear": "XR"}


def layers_between(session: Session, obs: str, code: str, start: datetime, end: datetime) -> list[ProductFile]:
    """Level 2 layers of a camera and code with DATE-OBS in ``[start, end)``, outliers left out, by DATE-OBS."""
    return list(
        session.scalars(
            select(ProductFile)
            .where(
                ProductFile.level == "2",
                ProductFile.file_type == code,
                ProductFile.observatory == obs,
                ProductFile.state == "created",
                ProductFile.outlier.is_(False),
                ProductFile.date_obs >= start,
                ProductFile.date_obs < end,
            )
            .order_by(ProductFile.date_obs, ProductFile.id)
        )
    )


def choose_window_inputs(
    before: list[ProductFile],
    after: list[ProductFile],
    settings: FCoronaSettings | StarfieldSettings,
    reference_time: datetime,
    noun: str = "layers",
) -> tuple[list[ProductFile], str | None]:
    """Choose a model's inputs from the products before and from its grid time on, or say why it is refused.

    Each side needs at least ``min_inputs_per_half``; above ``max_inputs_per_half`` a side is a
    seeded choice (seeded by the grid time and the side, so the two sides are chosen independently).
    ``noun`` names the inputs in the reason.
    """
    chosen, reasons = [], []
    for side, candidates, offset in (("before", before, 0), ("after", after, 1)):
        inputs, refusal = choose_inputs(
            candidates,
            settings.min_inputs_per_half,
            settings.max_inputs_per_half,
            settings.seed + offset,
            reference_time,
        )
        if refusal is not None:
            reasons.append(f"{len(candidates)} {noun} {side}, the minimum is {settings.min_inputs_per_half}")
        chosen += inputs
    if reasons:
        return [], "; ".join(reasons)
    return chosen, None


def run_f_corona_model(
    paths: list[str], reference_time: datetime, polarized: bool, frame: AbstractContextManager, workers: int
):
    """One call of punchbowl's ``construct_f_corona_model`` on Level 2 layers, in ``frame`` (a ``fixes`` block)."""
    from punchbowl.level3.f_corona_model import construct_f_corona_model

    preload_f_corona_in_forkserver()
    with frame:
        [cube] = construct_f_corona_model(
            list(paths),  # punchbowl sorts the list in place
            reference_time=reference_time.strftime("%Y-%m-%dT%H:%M:%S"),
            num_workers=workers,
            num_loaders=workers,
            polarized=polarized,
        )
    return cube


class FCoronaBuilder(GridModelBuilder):
    """Builds the ``PF{n}`` or ``CF{n}`` of one grid time from the camera's layers around it.

    Parameters
    ----------
    session, archive, config, run_id
        As ``GridModelBuilder``.
    camera
        The WFI camera.
    polarization
        ``polarized`` (``PF`` from ``XP``) or ``clear`` (``CF`` from ``XR``).

    """

    level = "3"
    code_version = LEVEL3_FCORONA_CODE_VERSION
    noun = "layers"  # what the inputs are called in a refusal

    def __init__(
        self,
        session: Session,
        archive: ArchiveResource,
        config: PipelineConfig,
        camera: Camera,
        polarization: str,
        run_id: str | None = None,
    ) -> None:
        super().__init__(session, archive, config, run_id)
        self.camera, self.polarization = camera, polarization
        self.code, self.obs = MODEL_CODES[polarization], camera.obs
        self.layer_code, self.layer_obs = LAYER_CODES[polarization], camera.obs
        self.settings = config.level3.fcorona

    @property
    def half_window(self) -> timedelta:
        """How far before and after the grid time layers are taken."""
        return timedelta(hours=self.settings.half_window_hours)

    def candidates(self, reference_time: datetime) -> list[ProductFile]:
        """Return the camera's layers of the window around the grid time."""
        return layers_between(
            self.session,
            self.layer_obs,
            self.layer_code,
            reference_time - self.half_window,
            reference_time + self.half_window,
        )

    def choose(self, candidates: list[ProductFile], reference_time: datetime) -> tuple[list[ProductFile], str | None]:
        """At least ``min_inputs_per_half`` on each side of the grid time, at most ``max_inputs_per_half`` (seeded)."""
        before = [p for p in candidates if p.date_obs < reference_time]
        after = [p for p in candidates if p.date_obs >= reference_time]
        inputs, refusal = choose_window_inputs(before, after, self.settings, reference_time, self.noun)
        if refusal is not None:
            refusal = (
                f"{self.code}{self.obs} {reference_time:%Y-%m-%dT%H:%M}: {refusal} "
                f"({self.layer_code}{self.layer_obs} within {self.settings.half_window_hours:g} h)"
            )
        return inputs, refusal

    def settings_fingerprint(self) -> object:
        """Return the settings a model depends on (not the worker count)."""
        return [self.settings.model_dump(exclude={"num_workers"}), self.config.level2.trefoil_downsample]

    def make_cube(self, inputs: list[ProductFile], reference_time: datetime):
        """Run punchbowl's F-corona builder."""
        paths = [str(self.archive.absolute(p.path)) for p in inputs]
        return run_f_corona_model(
            paths, reference_time, self.polarization == "polarized", self.frame(paths), self.settings.num_workers
        )

    def frame(self, paths: list[str]) -> AbstractContextManager:
        """Return the frame punchbowl builds the model in: the configured trefoil."""
        return f_corona_in_frame(self.config.level2.trefoil_downsample)

    def build(self, reference_time: datetime, partition_key: str | None = None) -> ModelOutcome:
        """Make or confirm the model of one grid time, or refuse it; the catalog's ``model_refusals`` follows."""
        delivered = self.session.scalars(
            select(ProductFile).where(
                ProductFile.level == self.level,
                ProductFile.file_type == self.code,
                ProductFile.observatory == self.obs,
                ProductFile.date_obs == reference_time,
                ProductFile.file_version == self.file_version,
                ProductFile.state != "created",
            )
        ).first()
        if delivered is not None:  # a delivered (bootstrap) model holds the name: never overwrite it
            outcome = ModelOutcome(reference_time, self.code, self.obs, "refused")
            outcome.reason = f"{self.code}{self.obs} {reference_time:%Y-%m-%dT%H:%M}: a delivered model has its name"
        else:
            outcome = super().build(reference_time, partition_key)
            if outcome.status == "refused":
                self.give_up_or_wait(outcome)
        record_model_outcome(self.session, self.level, outcome, partition_key, self.run_id)
        return outcome

    def give_up_or_wait(self, outcome: ModelOutcome) -> None:
        """Mark a refused model impossible once its window has passed for good, else say until when it is retried.

        Past ``impossible_after_hours`` after the end of its window no more inputs can come: the
        model is ``impossible`` (its consumers take the nearest models). Before that, its
        ``deadline`` is that time, when the waits sensor requests it again.
        """
        give_up = outcome.reference_time + self.half_window + timedelta(hours=self.settings.impossible_after_hours)
        if utcnow() < give_up:
            outcome.deadline = give_up
            return
        outcome.status = "impossible"
        outcome.reason = (
            f"{outcome.reason}; impossible: its window ended more than {self.settings.impossible_after_hours:g} h "
            "ago, no more inputs can come (consumers take the nearest models)"
        )


class NfiFCoronaBuilder(FCoronaBuilder):
    """Builds the NFI ``CFN`` of one grid time from the Level 2 ``CNN`` around it (settings ``level3.fcorona_nfi``).

    Parameters
    ----------
    session, archive, config, run_id
        As ``GridModelBuilder``.

    """

    noun = "CNN"

    def __init__(
        self, session: Session, archive: ArchiveResource, config: PipelineConfig, run_id: str | None = None
    ) -> None:
        super().__init__(session, archive, config, CAMERA_BY_OBS["4"], "clear", run_id)
        self.obs, self.layer_code, self.layer_obs = "N", "CN", "N"
        self.settings = config.level3.fcorona_nfi

    def settings_fingerprint(self) -> object:
        """Return the settings a model depends on (not the worker count)."""
        return self.settings.model_dump(exclude={"num_workers"})

    def frame(self, paths: list[str]) -> AbstractContextManager:
        """Return the frame punchbowl builds the model in: the ``CNN``'s (punchbowl's 2048 x 2048 at flight size)."""
        return f_corona_in_nfi_frame(paths[0])


def record_model_outcome(
    session: Session, level: str, outcome: ModelOutcome, partition_key: str | None, run_id: str | None
) -> None:
    """Keep the catalog's ``model_refusals`` in step: a model not made recorded with its status, a made one cleared."""
    existing = session.scalars(
        select(ModelRefusal).where(
            ModelRefusal.level == level,
            ModelRefusal.product_code == outcome.code,
            ModelRefusal.observatory == outcome.obs,
            ModelRefusal.reference_time == outcome.reference_time,
        )
    ).first()
    if outcome.status in ("made", "unchanged"):
        if existing is not None:
            session.delete(existing)
        return
    row = existing or ModelRefusal(
        level=level, product_code=outcome.code, observatory=outcome.obs, reference_time=outcome.reference_time
    )
    row.status, row.reason = outcome.status, (outcome.reason or outcome.status)[:4000]
    row.partition_key, row.dagster_run_id, row.recorded_at = partition_key, run_id, utcnow()
    session.add(row)
