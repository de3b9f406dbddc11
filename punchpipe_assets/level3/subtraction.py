"""Level 3 ``PIM``/``CIM``: each Level 2 group's layers minus the two F-corona models of each camera that bracket it.

A group is the layers (``XP{n}`` polarized, ``XR{n}`` clear) of one Level 2 cadence slot, found by
the slot (``acquisition_time``), so a group remade with a late member replaces its ``PIM``/``CIM``.
For each layer the models of its camera and polarization are chosen by the bracketing rule (the
nearest at or before its DATE-OBS and the nearest after, within the newest file version): the
pipeline's own models when they give a pair, else a pair of delivered (bootstrap) models, never
one of each. A group waits, not made, until every camera has its pair. punchbowl's
``level3_PIM_CIM_flow`` un-crops the layers, subtracts the models interpolated to each layer's
time and merges them again.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from punchpipe_assets.calibration.select import ModelPairs, catalogued_models, select_calibration, select_models
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.grid_models import ModelOutcome
from punchpipe_assets.level0.metadata import parse_fits_time
from punchpipe_assets.level2.mosaics import cycle_grid
from punchpipe_assets.partitions import MISSION_EPOCH
from punchpipe_assets.products import catalog_product, describe_file, product_fingerprint
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import ModelRefusal, ProductFile

# Bumped whenever the way a PIM/CIM is made changes; part of its fingerprint.
LEVEL3_PIM_CIM_CODE_VERSION = "level3-pim-cim-v1"
#: Product code of the subtracted mosaic and of the models, by Level 2 layer code.
PRODUCT_CODES = {"XP": "PI", "XR": "CI"}
MODEL_CODES = {"XP": "PF", "XR": "CF"}
WAITING_REASON = "waiting for the bracketing F-corona models"


def run_pim_cim_flow(layer_paths: Sequence[str], before_paths: Sequence[str], after_paths: Sequence[str]):
    """One call of punchbowl's ``level3_PIM_CIM_flow`` on one group's layers."""
    from punchbowl.level3.flow import level3_PIM_CIM_flow

    [cube] = level3_PIM_CIM_flow(
        [str(p) for p in layer_paths], [str(p) for p in before_paths], [str(p) for p in after_paths]
    )
    return cube


def _bracketing(candidates, when: datetime) -> list:
    return select_calibration(candidates, when, bracketing=True)


def select_bracketing_models(pairs: ModelPairs, when: datetime) -> list[ProductFile]:
    """Return ``[before, after]`` models for a time: the pipeline's own pair, else a delivered pair, else ``[]``.

    A pair never mixes a model the pipeline made with a bootstrap one (interpolating between a
    real F corona and a stand-in would be neither).
    """
    own = [pair for pair in pairs if pair[1].state == "created"]
    delivered = [pair for pair in pairs if pair[1].state != "created"]
    for pool in (own, delivered):
        chosen = select_models(pool, when, _bracketing)
        if len(chosen) == 2:
            return chosen
    return []


def grid_neighbours(when: datetime, spacing_hours: int) -> tuple[datetime, datetime]:
    """Return the grid times at or before ``when`` and after it (every ``spacing_hours`` from the epoch's midnight)."""
    step = timedelta(hours=spacing_hours)
    before = MISSION_EPOCH + ((when - MISSION_EPOCH) // step) * step
    return before, before + step


def select_nearest_models(
    pairs: ModelPairs, when: datetime, impossible: set[datetime], spacing_hours: int
) -> tuple[list[ProductFile], str | None]:
    """Return the nearest of the pipeline's own models, twice, when the grid point on the other side is impossible.

    Used when no bracketing pair exists: if the pipeline has a model on one side of ``when`` only and
    the grid point next to ``when`` on the other side was marked impossible (its window passed
    with too few inputs), no model will ever come there; the nearest model stands for both (punchbowl
    then interpolates between equal models). Returns ``([model, model], flag)``, or ``([], None)``.
    """
    own = [pair for pair in pairs if pair[1].state == "created"]
    chosen = select_models(own, when, lambda candidates, t: _bracketing(candidates, t) * 2)
    if len(chosen) != 2:
        return [], None
    model = chosen[0]
    grid_before, grid_after = grid_neighbours(when, spacing_hours)
    missing = grid_after if model.date_obs <= when else grid_before
    if missing not in impossible:
        return [], None
    name = f"{model.file_type}{model.observatory}"
    flag = f"nearest model {name} only: the model of {missing:%Y-%m-%dT%H:%M} is impossible"
    return [model, model], flag


class SubtractedMosaicProcessor:
    """Makes the ``PIM``/``CIM`` of every Level 2 group of a window, or says what it waits for.

    Parameters
    ----------
    session
        Catalog session (the caller commits).
    archive
        Where products are written.
    config
        The configuration.
    run_id
        The Dagster run, recorded with each product.
    layer_codes
        The groups to make: ``XP`` (``PIM``), ``XR`` (``CIM``); default both.

    """

    level = "3"
    #: What a group is made of (level of its members), what it becomes and the models it takes, by member code.
    input_level = "2"
    input_observatories = ("1", "2", "3")
    product_codes = PRODUCT_CODES
    model_codes = MODEL_CODES
    code_version = LEVEL3_PIM_CIM_CODE_VERSION
    waiting_reason = WAITING_REASON
    #: The section of ``config.level3`` holding the models' grid.
    model_settings = "fcorona"

    def __init__(
        self,
        session: Session,
        archive: ArchiveResource,
        config: PipelineConfig,
        run_id: str | None = None,
        layer_codes: Sequence[str] | None = None,
    ) -> None:
        self.session, self.archive, self.config, self.run_id = session, archive, config, run_id
        self.layer_codes = tuple(layer_codes or self.product_codes)
        self.file_version = config.level0.file_version
        self._models: dict[tuple[str, str], ModelPairs] = {}
        self._impossible: dict[tuple[str, str], set[datetime]] = {}

    def models(self, code: str, obs: str) -> ModelPairs:
        """Return the catalogued models of a code and camera (the pipeline's and bootstrap ones), read once."""
        if (code, obs) not in self._models:
            self._models[(code, obs)] = catalogued_models(self.session, self.level, code, obs)
        return self._models[(code, obs)]

    def models_for(self, model_code: str, obs: str, when: datetime) -> tuple[list[ProductFile], str | None]:
        """Return the ``[before, after]`` models of a camera for a time and a flag, or ``([], None)`` to wait.

        The bracketing pair (``select_bracketing_models``); without one, the nearest model when the
        grid point on its other side is impossible (``select_nearest_models``, flagged).
        """
        pair = select_bracketing_models(self.models(model_code, obs), when)
        if pair:
            return pair, None
        spacing = getattr(self.config.level3, self.model_settings).spacing_hours
        return select_nearest_models(self.models(model_code, obs), when, self.impossible(model_code, obs), spacing)

    def impossible(self, code: str, obs: str) -> set[datetime]:
        """Return the grid times of a code and camera whose model is impossible, read once."""
        if (code, obs) not in self._impossible:
            self._impossible[(code, obs)] = set(
                self.session.scalars(
                    select(ModelRefusal.reference_time).where(
                        ModelRefusal.level == self.level,
                        ModelRefusal.product_code == code,
                        ModelRefusal.observatory == obs,
                        ModelRefusal.status == "impossible",
                    )
                )
            )
        return self._impossible[(code, obs)]

    def groups(self, start: datetime, end: datetime) -> dict[tuple[str, datetime], list[ProductFile]]:
        """Return the layers of every group whose slot ends in ``[start, end)``, by layer code and slot start."""
        grid = cycle_grid(self.config)
        slots = grid.slots_ending_in(start, end)
        if not slots:
            return {}
        rows = self.session.scalars(
            select(ProductFile)
            .where(
                ProductFile.level == self.input_level,
                ProductFile.file_type.in_(self.layer_codes),
                ProductFile.observatory.in_(self.input_observatories),
                ProductFile.state == "created",
                ProductFile.acquisition_time >= grid.start(slots[0]),
                ProductFile.acquisition_time < grid.start(slots[-1] + 1),
            )
            .order_by(ProductFile.acquisition_time, ProductFile.observatory)
        )
        groups: dict[tuple[str, datetime], list[ProductFile]] = {}
        for row in rows:
            groups.setdefault((row.file_type, row.acquisition_time), []).append(row)
        return groups

    def process_window(self, start: datetime, end: datetime, partition_key: str | None = None) -> list[ModelOutcome]:
        """Make, confirm or leave waiting the ``PIM``/``CIM`` of every group of the window."""
        return [
            self.process_group(code, slot_start, layers, partition_key)
            for (code, slot_start), layers in sorted(self.groups(start, end).items(), key=lambda i: (i[0][1], i[0][0]))
        ]

    def existing(self, code: str, slot_start: datetime) -> ProductFile | None:
        """Find the catalogued product of a group, by its slot (its DATE-OBS moves when the group is remade)."""
        return self.session.scalars(
            select(ProductFile).where(
                ProductFile.level == self.level,
                ProductFile.file_type == code,
                ProductFile.observatory == "M",
                ProductFile.acquisition_time == slot_start,
                ProductFile.state == "created",
            )
        ).first()

    def process_group(
        self, layer_code: str, slot_start: datetime, layers: list[ProductFile], partition_key: str | None
    ) -> ModelOutcome:
        """Make the product of one group, unless it waits for models or its inputs did not change."""
        code = self.product_codes[layer_code]
        outcome = ModelOutcome(layers[0].date_obs, code, "M", "failed")
        pairs, missing = [], []
        for layer in layers:
            model_code = self.model_codes[layer_code]
            pair, flag = self.models_for(model_code, layer.observatory, layer.date_obs)
            if not pair:
                missing.append(f"{model_code}{layer.observatory}")
            if flag:
                outcome.flags.append(flag)
            pairs.append(pair)
        if missing:
            outcome.status = "waiting"
            outcome.reason = (
                f"{code}M of the group of {slot_start:%Y-%m-%dT%H:%M:%S}: {self.waiting_reason} "
                f"({', '.join(missing)}: none at or before and after {layers[0].date_obs:%Y-%m-%dT%H:%M:%S})"
            )
            return outcome
        models = [model for pair in pairs for model in pair]
        outcome.inputs = [describe_file(p) for p in [*layers, *models]]
        fingerprint = product_fingerprint(
            self.code_version,
            self.file_version,
            [p.sha256 for p in layers],
            [m.sha256 for m in models],
            *([outcome.flags] if outcome.flags else []),  # fingerprints of unflagged products unchanged
        )
        existing = self.existing(code, slot_start)
        if (
            existing is not None
            and existing.fingerprint == fingerprint
            and self.archive.absolute(existing.path).exists()
        ):
            outcome.status, outcome.path, outcome.sha256 = "unchanged", existing.path, existing.sha256
            outcome.reference_time = existing.date_obs
            return outcome
        try:
            cube = self.run(layers, pairs)
            cube.meta["FILEVRSN"] = self.file_version
            for flag in outcome.flags:
                cube.meta.history.add_now("punchpipe", flag[:60])
            date_obs = parse_fits_time(cube.meta["DATE-OBS"].value)
            path = self.archive.product_path(self.level, code, "M", date_obs, self.file_version)
            sha256 = self.archive.write_cube(cube, path, skip_stats=False)
        except Exception as error:  # noqa: BLE001 - a failed group is recorded, the others go on
            outcome.reason = f"{type(error).__name__}: {error}\n" + traceback.format_exc(limit=3)
            return outcome
        stored = self.archive.relative(path)
        if existing is not None and existing.path != stored:
            self.archive.absolute(existing.path).unlink(missing_ok=True)
        row = catalog_product(
            self.session,
            existing,
            code=code,
            obs="M",
            date_obs=date_obs,
            file_version=self.file_version,
            path=stored,
            sha256=sha256,
            fingerprint=fingerprint,
            parents=[*layers, *models],
            acquisition_time=slot_start,
            partition_key=partition_key,
            run_id=self.run_id,
            level=self.level,
        )
        row.flags = "; ".join(outcome.flags) or None
        outcome.status, outcome.path, outcome.sha256, outcome.reference_time = "made", stored, sha256, date_obs
        return outcome

    def run(self, layers: list[ProductFile], pairs: list[list[ProductFile]]):
        """Call punchbowl on one group's members and the ``[before, after]`` models of each."""
        return run_pim_cim_flow(
            [self.archive.absolute(p.path) for p in layers],
            [self.archive.absolute(pair[0].path) for pair in pairs],
            [self.archive.absolute(pair[1].path) for pair in pairs],
        )


def describe_models(outcome: ModelOutcome) -> list[dict]:
    """Return the F-corona models a product was made with, each with its ``origin`` (pipeline or delivered)."""
    return [i for i in outcome.inputs if i["code"] in MODEL_CODES.values()]
