"""Models on a fixed time grid (F-corona, starfield): which inputs a grid point takes, refusal, lineage.

A model at grid time ``t`` is built from the products of a window around (or before) ``t``, at
least a minimum number, at most a maximum (a seeded choice: the same inputs give the same model).
Too few inputs: the model is refused with the reason, and tried again when more data arrive.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.level0.metadata import parse_fits_time
from punchpipe_assets.products import catalog_product, describe_file, existing_product, product_fingerprint
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import ProductFile


@dataclass
class ModelOutcome:
    """What happened to one model of a grid point."""

    reference_time: datetime
    code: str
    obs: str
    status: str  # made | unchanged | refused | failed | waiting
    reason: str | None = None
    deadline: datetime | None = None
    flags: list[str] = field(default_factory=list)
    path: str | None = None
    sha256: str | None = None
    inputs: list[dict] = field(default_factory=list)

    def describe(self) -> dict:
        """Describe the model as materialization metadata lists it."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "code": self.code,
            "obs": self.obs,
            "status": self.status,
            "flags": self.flags,
        }


def choose_inputs(
    candidates: Sequence[ProductFile], minimum: int, maximum: int, seed: int, reference_time: datetime
) -> tuple[list[ProductFile], str | None]:
    """At most ``maximum`` inputs (a choice seeded by ``seed`` and the grid time), or a refusal below ``minimum``."""
    if len(candidates) < minimum:
        return [], f"{len(candidates)} inputs in the window, the minimum is {minimum}"
    chosen = list(candidates)
    if len(chosen) > maximum:
        rng = np.random.default_rng([seed, int(reference_time.timestamp())])
        keep = sorted(rng.choice(len(chosen), size=maximum, replace=False))
        chosen = [chosen[i] for i in keep]
    return sorted(chosen, key=lambda p: (p.date_obs, p.id)), None


def window_inputs(
    session: Session, level: str, codes: Sequence[str], obs: str, start: datetime, end: datetime
) -> list[ProductFile]:
    """Products of a level, codes and observatory with DATE-OBS in ``[start, end)``."""
    return list(
        session.scalars(
            select(ProductFile)
            .where(
                ProductFile.level == level,
                ProductFile.file_type.in_(codes),
                ProductFile.observatory == obs,
                ProductFile.state == "created",
                ProductFile.date_obs >= start,
                ProductFile.date_obs < end,
            )
            .order_by(ProductFile.date_obs, ProductFile.id)
        )
    )


class GridModelBuilder:
    """Builds one model per grid point; subclasses pick the inputs and call punchbowl.

    Parameters
    ----------
    session
        Catalog session (the caller commits).
    archive
        Where models are written.
    config
        The configuration.
    run_id
        The Dagster run, recorded with each model.

    """

    level = "Q"
    code = "CF"
    obs = "M"
    code_version = "model-v1"

    def __init__(self, session: Session, archive: ArchiveResource, config: PipelineConfig, run_id: str | None = None):
        self.session, self.archive, self.config, self.run_id = session, archive, config, run_id
        self.file_version = config.level0.file_version

    def candidates(self, reference_time: datetime) -> list[ProductFile]:
        """Every product the model of a grid time may be built from."""
        raise NotImplementedError

    def choose(self, candidates: list[ProductFile], reference_time: datetime) -> tuple[list[ProductFile], str | None]:
        """Choose the inputs of the model, or return a refusal reason."""
        raise NotImplementedError

    def make_cube(self, inputs: list[ProductFile], reference_time: datetime):
        """Run punchbowl on the inputs."""
        raise NotImplementedError

    def settings_fingerprint(self) -> object:
        """Return the settings a model depends on."""
        return None

    def flags_for(self, inputs: list[ProductFile], reference_time: datetime) -> list[str]:
        """Return the flags of a product made from these inputs (e.g. an incomplete bin); none by default."""
        return []

    def write_cube(self, cube, path) -> str:
        """Write the product into the archive and return its SHA-256."""
        return self.archive.write_cube(cube, path, skip_stats=False)

    def build(self, reference_time: datetime, partition_key: str | None = None) -> ModelOutcome:
        """Make or confirm the model of one grid time, or refuse it with the reason."""
        outcome = ModelOutcome(reference_time, self.code, self.obs, "failed")
        inputs, refusal = self.choose(self.candidates(reference_time), reference_time)
        if refusal is not None:
            outcome.status, outcome.reason = "refused", refusal
            return outcome
        outcome.inputs = [describe_file(p) for p in inputs]
        outcome.flags = self.flags_for(inputs, reference_time)
        fingerprint = product_fingerprint(
            self.code_version, self.file_version, self.settings_fingerprint(), [p.sha256 for p in inputs], outcome.flags
        )
        existing = existing_product(self.session, self.code, self.obs, reference_time, self.file_version, self.level)
        if existing is not None and existing.fingerprint == fingerprint and self.archive.holds_product(existing):
            outcome.status, outcome.path, outcome.sha256 = "unchanged", existing.path, existing.sha256
            return outcome
        try:
            cube = self.make_cube(inputs, reference_time)
            cube.meta["FILEVRSN"] = self.file_version  # punchbowl's model builders leave it empty
            for flag in outcome.flags:
                cube.meta.history.add_now("punchpipe", flag[:60])
            date_obs = parse_fits_time(cube.meta["DATE-OBS"].value)
            path = self.archive.product_path(self.level, self.code, self.obs, date_obs, self.file_version)
            sha256 = self.write_cube(cube, path)
        except Exception as error:  # noqa: BLE001 - a failed model is recorded, the others go on
            outcome.reason = f"{type(error).__name__}: {error}\n" + traceback.format_exc(limit=3)
            return outcome
        stored = self.archive.relative(path)
        row = catalog_product(
            self.session,
            existing,
            code=self.code,
            obs=self.obs,
            date_obs=reference_time,
            file_version=self.file_version,
            path=stored,
            sha256=sha256,
            fingerprint=fingerprint,
            parents=inputs,
            acquisition_time=reference_time,
            partition_key=partition_key,
            run_id=self.run_id,
            level=self.level,
        )
        row.flags = "; ".join(outcome.flags) or None
        outcome.status, outcome.path, outcome.sha256 = "made", stored, sha256
        return outcome
