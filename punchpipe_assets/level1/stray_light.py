"""Stray-light models (``SM SZ SP SR``) of the WFI cameras, built by punchbowl's ``estimate_stray_light``.

What follows the mission's control segment (``punchbowl.auto.flows.stray_light`` in punchbowl 0.0.25):
models are made on a fixed grid, one per camera and day at 12:00 UTC, from the X frames of a
window of days centred on it; clear models (``SR``) from ``XR`` frames, polarized models
(``SM SZ SP``) from matched ``XM XZ XP`` triplets (``polarized=True``, punchbowl bundles them).
Only WFI (observatories 1-3): the control segment disables NFI static stray light, and punchbowl
0.0.25's ``estimate_stray_light`` cannot model NFI (it indexes its three WFI ``bottom_crops`` with
the observatory number); NFI takes the dynamic path (``level1_nfi_core_flow``).
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from punchpipe_assets.calibration.kinds import parse_calibration_name
from punchpipe_assets.calibration.select import select_mask
from punchpipe_assets.cameras import CAMERAS, Camera
from punchpipe_assets.config import StrayLightSettings
from punchpipe_assets.products import (
    FrameOutcome,
    catalog_product,
    describe_file,
    existing_product,
    product_fingerprint,
)
from punchpipe_assets.resources.archive import ArchiveResource, sha256_of
from punchpipe_assets.resources.catalog import ProductFile

# Bumped whenever the way a product is made changes; part of every product's fingerprint.
LEVEL1_STRAY_LIGHT_CODE_VERSION = "level1-stray-light-v1"

#: Cameras with static stray-light models, late and quick products (see the module docstring).
STRAY_LIGHT_CAMERAS: tuple[Camera, ...] = tuple(camera for camera in CAMERAS if camera.instrument == "WFI")
#: Hour (UTC) of each day's stray-light model: the grid is one model per day from the mission start.
MODEL_HOUR = 12
EARLY_CODES = ("XM", "XZ", "XP", "XR")
#: Model groups: the early codes that feed them and the model codes they give.
MODEL_GROUPS = {"clear": (("XR",), ("SR",)), "polarized": (("XM", "XZ", "XP"), ("SM", "SZ", "SP"))}
#: punchbowl's corona subtraction inside ``estimate_stray_light`` builds its first coronal model only
#: when the inputs span more than 6 hours (and at least 51 of them fall in a 30-hour window); with
#: none it fails with an IndexError. Refused here with the reason instead.
MIN_MODEL_SPAN = timedelta(hours=6)


def model_reference_time(day: datetime) -> datetime:
    """Return the reference time (DATE-OBS) of the stray-light model of a day: 12:00 UTC."""
    return datetime(day.year, day.month, day.day, MODEL_HOUR)


def model_window(reference_time: datetime, window_days: float) -> tuple[datetime, datetime]:
    """Return the ``[start, end)`` of the early frames a model is built from, centred on its reference time."""
    half = timedelta(days=window_days / 2)
    return reference_time - half, reference_time + half


def register_stray_light_file(
    session: Session, archive: ArchiveResource, path: Path, file_version: str | None = None
) -> ProductFile:
    """Catalogue a stray-light model file already in the archive (e.g. one made elsewhere).

    Its fingerprint is its SHA-256; no lineage rows are written.
    """
    code, obs, date_obs, version = parse_calibration_name(path)
    digest = sha256_of(path)
    existing = existing_product(session, code, obs, date_obs, file_version or version)
    return catalog_product(
        session,
        existing,
        code=code,
        obs=obs,
        date_obs=date_obs,
        file_version=file_version or version,
        path=archive.relative(path),
        sha256=digest,
        fingerprint=digest,
        parents=[],
    )


class StrayLightModelBuilder:
    """Makes the stray-light models of one camera and grid point with ``estimate_stray_light``.

    Parameters
    ----------
    session
        Catalog session (the caller commits).
    archive
        Where models are written.
    settings
        Window, minimum input count and punchbowl parameters.
    file_version
        Version of the models.
    run_id
        The Dagster run, recorded with each model.

    """

    def __init__(
        self,
        session: Session,
        archive: ArchiveResource,
        settings: StrayLightSettings,
        file_version: str = "1",
        run_id: str | None = None,
    ) -> None:
        self.session, self.archive, self.settings = session, archive, settings
        self.file_version, self.run_id = file_version, run_id

    def inputs(self, camera: Camera, codes: Sequence[str], reference_time: datetime) -> list[ProductFile]:
        """Early frames of the given codes in the model's window, without missing packets."""
        start, end = model_window(reference_time, self.settings.window_days)
        return list(
            self.session.scalars(
                select(ProductFile)
                .where(
                    ProductFile.level == "1",
                    ProductFile.observatory == camera.obs,
                    ProductFile.file_type.in_(codes),
                    ProductFile.state == "created",
                    ProductFile.bad_packets.is_(False),
                    ProductFile.date_obs >= start,
                    ProductFile.date_obs < end,
                )
                .order_by(ProductFile.date_obs)
            )
        )

    def process_day(
        self, camera: Camera, reference_time: datetime, partition_key: str | None = None
    ) -> tuple[list[FrameOutcome], list[ProductFile]]:
        """Make or confirm the clear and polarized models of one grid point.

        Returns
        -------
        tuple
            One outcome per model code (``SR``, ``SM``, ``SZ``, ``SP``; ``refused`` with the reason
            below the minimum input count) and every early frame looked at.

        """
        outcomes: list[FrameOutcome] = []
        looked_at: list[ProductFile] = []
        for group, (early_codes, model_codes) in MODEL_GROUPS.items():
            frames = self.inputs(camera, early_codes, reference_time)
            looked_at.extend(frames)
            outcomes.extend(self._process_group(camera, reference_time, group, frames, model_codes, partition_key))
        return outcomes, looked_at

    def _process_group(
        self,
        camera: Camera,
        reference_time: datetime,
        group: str,
        frames: list[ProductFile],
        model_codes: Sequence[str],
        partition_key: str | None,
    ) -> list[FrameOutcome]:
        names = {
            code: self.archive.product_path("1", code, camera.obs, reference_time, self.file_version).name
            for code in model_codes
        }
        outcomes = {code: FrameOutcome(names[code], "failed") for code in model_codes}
        polarized = group == "polarized"
        # Polarized models are built from M, Z, P triplets (punchbowl matches them by time): count triplets.
        count = min(sum(f.file_type == code for f in frames) for code in {f"X{c[1]}" for c in model_codes})
        span = (frames[-1].date_obs - frames[0].date_obs) if frames else timedelta(0)
        reason = None
        unit = "M/Z/P triplets" if polarized else "clear frames"
        if count < self.settings.min_frames:
            reason = f"{count} {unit} in the window, the minimum is {self.settings.min_frames}"
        elif span <= MIN_MODEL_SPAN:
            reason = f"inputs span {span}, punchbowl's corona subtraction needs more than {MIN_MODEL_SPAN}"
        if reason is not None:
            for outcome in outcomes.values():
                outcome.status, outcome.reason = "refused", reason
            return list(outcomes.values())

        mask = select_mask(self.session, camera.obs, reference_time)
        calibration = [describe_file(mask)] if mask is not None else []
        settings = self.settings.model_dump(exclude={"min_frames", "window_days"})
        fingerprint = product_fingerprint(
            LEVEL1_STRAY_LIGHT_CODE_VERSION,
            self.file_version,
            settings,
            sorted(f.sha256 for f in frames),
            mask.sha256 if mask is not None else None,
        )
        existing = {
            code: existing_product(self.session, code, camera.obs, reference_time, self.file_version)
            for code in model_codes
        }
        for outcome in outcomes.values():
            outcome.calibration = calibration
        if all(
            e is not None and e.fingerprint == fingerprint and self.archive.holds_product(e) for e in existing.values()
        ):
            for code, outcome in outcomes.items():
                outcome.status, outcome.path, outcome.sha256 = "unchanged", existing[code].path, existing[code].sha256
            return list(outcomes.values())
        try:
            cubes = run_stray_light_estimation(
                [str(self.archive.absolute(f.path)) for f in frames],
                reference_time,
                self.settings,
                polarized,
                self.archive.absolute(mask.path) if mask is not None else None,
            )
            written = {}
            for cube in cubes:
                code = str(cube.meta["TYPECODE"].value)
                cube.meta["FILEVRSN"] = self.file_version
                path = self.archive.product_path("1", code, camera.obs, reference_time, self.file_version)
                written[code] = (path, self.archive.write_cube(cube, path, skip_stats=False))
            missing = set(model_codes) - set(written)
            if missing:
                raise RuntimeError(f"estimate_stray_light returned no {sorted(missing)} model")
        except Exception as error:  # noqa: BLE001 - a failed model is recorded, the others go on
            reason = f"{type(error).__name__}: {error}\n" + traceback.format_exc(limit=3)
            for outcome in outcomes.values():
                outcome.reason = reason
            return list(outcomes.values())
        parents = [*frames, *([mask] if mask is not None else [])]
        for code, (path, sha256) in written.items():
            catalog_product(
                self.session,
                existing[code],
                code=code,
                obs=camera.obs,
                date_obs=reference_time,
                file_version=self.file_version,
                path=self.archive.relative(path),
                sha256=sha256,
                fingerprint=fingerprint,
                parents=parents,
                partition_key=partition_key,
                run_id=self.run_id,
            )
            outcomes[code].status, outcomes[code].path, outcomes[code].sha256 = (
                "made",
                self.archive.relative(path),
                sha256,
            )
        return list(outcomes.values())


def run_stray_light_estimation(
    paths: Sequence[str],
    reference_time: datetime,
    settings: StrayLightSettings,
    polarized: bool,
    mask_path: str | None = None,
) -> list:
    """One call of punchbowl's ``estimate_stray_light``, as the control segment makes it.

    The mask is passed as its packed ``.bin`` file; every image must be 2048x2048 (punchbowl's
    assumption).
    """
    from punchbowl.level1.stray_light import estimate_stray_light

    return estimate_stray_light(
        list(paths),
        reference_time=reference_time.strftime("%Y-%m-%d %H:%M:%S"),
        num_workers=settings.num_workers,
        n_crota_bins=settings.n_crota_bins,
        crota_bin_width=settings.crota_bin_width,
        stride=settings.stride,
        window_size=settings.window_size,
        polarized=polarized,
        image_mask_path=str(Path(mask_path).with_suffix(".bin")) if mask_path else None,
    )
