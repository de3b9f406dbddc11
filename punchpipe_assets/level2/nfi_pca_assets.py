"""The NFI PCA background through Dagster: Level 2 ``CNN`` and Level 1 ``AR4``/``SR4`` per batch.

One multi-asset (``level2_cnn``, ``level1_pca_components_nfi4``, ``level1_pca_background_nfi4``),
partitioned on the batch windows of ``level2.nfi_pca`` (``batch_hours`` from the mission epoch): a
window depends on the early Level 1 hours of NFI it and its context reach (built-in
``TimeWindowPartitionMapping``, ``context_steps`` windows a side). Batches come from
``nfi_pca.select_batches``; each ready batch is one punchbowl ``level2_pca_core_flow`` call
(arguments as the control segment's ``level2_PCA`` flow: files to filter, context files, the NFI
mask, loaders, workers, reference date = mean DATE-OBS of the frames filtered). Every ``CNN``
records its frame and the batch's context frames as parents, ``AR4``/``SR4`` every frame of the call;
a ``CNN`` is an outlier in the catalog when its frame is or PCA's ``OUTLIER`` says so (the NFI F-corona
models leave outliers out).
"""

import traceback
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from punchpipe_assets.automation import AUTOMATION_LOOKBACK, on_new_inputs
from punchpipe_assets.calibration.assets import calibration_key
from punchpipe_assets.calibration.select import select_mask
from punchpipe_assets.cameras import CAMERA_BY_OBS
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.grid_models import ModelOutcome, window_inputs
from punchpipe_assets.level1.assets import level1_early_key
from punchpipe_assets.level2.nfi_pca import BatchStatus, NfiPcaSettings, PcaBatch, select_batches
from punchpipe_assets.materialize import (
    PUNCHBOWL_LARGE_MEMORY_POOL,
    model_metadata,
    model_version,
    models_check,
    models_made_spec,
    pool_kwargs,
)
from punchpipe_assets.partitions import MISSION_EPOCH
from punchpipe_assets.products import catalog_product, describe_file, existing_product, product_fingerprint
from punchpipe_assets.quicklook import with_quicklook
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource
from punchpipe_assets.resources.catalog import ProductFile, naive_utc, utcnow
from punchpipe_assets.sensors.waits import record_waits

LEVEL2_NFI_PCA_CODE_VERSION = "level2-nfi-pca-v1"
NFI = CAMERA_BY_OBS["4"]
LEVEL2_CNN = dg.AssetKey("level2_cnn")
PCA_COMPONENTS = dg.AssetKey("level1_pca_components_nfi4")
PCA_BACKGROUND = dg.AssetKey("level1_pca_background_nfi4")
#: Output key of each product code.
OUTPUT_KEYS = {"CN": LEVEL2_CNN, "AR": PCA_COMPONENTS, "SR": PCA_BACKGROUND}


def batch_partitions(batch_hours: int) -> dg.TimeWindowPartitionsDefinition:
    """One partition per batch window, every ``batch_hours`` from the epoch's midnight; it exists once it ended."""
    return dg.TimeWindowPartitionsDefinition(
        start=MISSION_EPOCH,
        cron_schedule=f"0 */{batch_hours} * * *" if batch_hours < 24 else "0 0 * * *",
        fmt="%Y-%m-%d-%H:%M",
    )


def nfi_frames(session: Session, start: datetime, end: datetime) -> list[ProductFile]:
    """Early clear NFI frames (Level 1 ``XR4``, the in-service PCA input) with DATE-OBS in ``[start, end)``."""
    return window_inputs(session, "1", ("XR",), "4", start, end)


def data_ends(session: Session) -> tuple[datetime | None, datetime | None]:
    """DATE-OBS of the oldest and newest early clear NFI frame in the catalog."""
    where = (ProductFile.level == "1", ProductFile.file_type == "XR", ProductFile.observatory == "4")
    return session.execute(select(func.min(ProductFile.date_obs), func.max(ProductFile.date_obs)).where(*where)).one()


def run_pca(inputs: list[str], context: list[str], mask: str | None, ref_date: datetime, settings: NfiPcaSettings):
    """One call of punchbowl's ``level2_pca_core_flow``: ``[AR4, SR4, CNN...]``.

    Its pools are ``forkserver`` ones, whose children import punchbowl afresh (most of a reduced
    call's time): the fork server, if not running yet, preloads the PCA module once.
    """
    import multiprocessing

    from punchbowl.level2.flow import level2_pca_core_flow

    multiprocessing.get_context("forkserver").set_forkserver_preload(["__main__", "punchbowl.level2.nfi_pca"])

    return level2_pca_core_flow(
        inputs,
        context,
        mask,
        n_loaders=settings.n_loaders,
        n_workers=settings.n_workers,
        ref_date=ref_date.strftime("%Y-%m-%dT%H:%M:%S"),
    )


class PcaBatchProcessor:
    """Makes the products of a batch window: each ready batch's ``CNN``, ``AR4`` and ``SR4``."""

    def __init__(self, session: Session, archive: ArchiveResource, config: PipelineConfig, run_id: str | None = None):
        self.session, self.archive, self.run_id = session, archive, run_id
        self.settings, self.file_version = config.level2.nfi_pca, config.level0.file_version

    def process_window(
        self, start: datetime, end: datetime, partition_key: str | None = None, now: datetime | None = None
    ) -> list[ModelOutcome]:
        """Outcomes of every product of the window's batches (one ``waiting``/``refused`` entry per batch not made)."""
        reach = timedelta(hours=self.settings.max_context_hours)
        frames = nfi_frames(self.session, start - reach, end + reach)
        oldest, newest = data_ends(self.session)
        outcomes = []
        for batch in select_batches(frames, start, end, oldest, newest, now or utcnow(), self.settings):
            if batch.status is BatchStatus.READY:
                outcomes.extend(self.make_batch(batch, partition_key))
            else:
                deadline = batch.deadline if batch.status is BatchStatus.WAIT else None
                status = "waiting" if deadline else "refused"
                outcomes.append(ModelOutcome(batch.frames[0].date_obs, "CN", "N", status, batch.reason, deadline))
        return outcomes

    def make_batch(self, batch: PcaBatch[ProductFile], partition_key: str | None) -> list[ModelOutcome]:
        """Make (or confirm) the products of one batch."""
        every = sorted([*batch.frames, *batch.context], key=lambda f: f.date_obs)
        ref_date = datetime.fromtimestamp(
            sum(f.date_obs.timestamp() for f in batch.frames) / len(batch.frames)
        ).replace(microsecond=0)
        mask = select_mask(self.session, "4", batch.frames[0].date_obs)
        fingerprint = product_fingerprint(
            LEVEL2_NFI_PCA_CODE_VERSION,
            self.file_version,
            self.settings.model_dump(),
            [f.sha256 for f in batch.frames],
            [f.sha256 for f in batch.context],
            mask.sha256 if mask else None,
            batch.flags,
        )
        inputs = [describe_file(f) for f in every]
        wanted = [("AR", "4", "1", ref_date), ("SR", "4", "1", ref_date)]
        wanted += [("CN", "N", "2", f.date_obs) for f in batch.frames]
        existing = [existing_product(self.session, c, o, t, self.file_version, lv) for c, o, lv, t in wanted]
        if all(e is not None and e.fingerprint == fingerprint and self.archive.holds_product(e) for e in existing):
            return [
                ModelOutcome(t, c, o, "unchanged", flags=batch.flags, path=e.path, sha256=e.sha256, inputs=inputs)
                for (c, o, _, t), e in zip(wanted, existing, strict=True)
            ]
        try:
            cubes = run_pca(
                [str(self.archive.absolute(f.path)) for f in batch.frames],
                [str(self.archive.absolute(f.path)) for f in batch.context],
                str(self.archive.absolute(mask.path).with_suffix(".bin")) if mask else None,
                ref_date,
                self.settings,
            )
        except Exception as error:  # noqa: BLE001 - a failed batch is recorded, the others go on
            reason = f"{type(error).__name__}: {error}\n" + traceback.format_exc(limit=3)
            return [ModelOutcome(batch.frames[0].date_obs, "CN", "N", "failed", reason, inputs=inputs)]
        by_name = {Path(f.path).name: f for f in batch.frames}
        outcomes = []
        for cube in cubes:
            code = cube.meta["TYPECODE"].value
            obs = cube.meta["OBSCODE"].value
            level = "2" if code == "CN" else "1"
            # DATE-OBS of punchbowl's cubes is not always readable back (empty): a CNN is named by its frame.
            frame = by_name[cube.meta.provenance[0]] if code == "CN" else None
            date_obs = frame.date_obs if frame is not None else ref_date
            parents = every if frame is None else [frame, *batch.context]
            cube.meta["FILEVRSN"] = self.file_version
            if not cube.meta["DATE-OBS"].value:  # punchbowl leaves the CNN's empty; the writer needs it
                cube.meta["DATE-OBS"] = f"{date_obs:%Y-%m-%dT%H:%M:%S}.000"
            for flag in batch.flags:
                cube.meta.history.add_now("punchpipe", flag[:60])
            path = self.archive.product_path(level, code, obs, date_obs, self.file_version)
            sha256 = self.archive.write_cube(cube, path, skip_stats=False, skip_wcs_conversion=code == "AR")
            row = catalog_product(
                self.session,
                existing_product(self.session, code, obs, date_obs, self.file_version, level),
                code=code,
                obs=obs,
                date_obs=date_obs,
                file_version=self.file_version,
                path=self.archive.relative(path),
                sha256=sha256,
                fingerprint=fingerprint,
                parents=parents,
                acquisition_time=date_obs,
                partition_key=partition_key,
                run_id=self.run_id,
                level=level,
            )
            row.flags = "; ".join(batch.flags) or None
            if frame is not None:  # as the control segment: the frame's flag, or the one PCA set (what CFN leaves out)
                row.outlier = bool(frame.outlier) or bool(cube.meta["OUTLIER"].value)
            outcomes.append(
                ModelOutcome(
                    date_obs, code, obs, "made", flags=batch.flags, path=row.path, sha256=sha256, inputs=inputs
                )
            )
        return outcomes


def _version(outcomes: list[ModelOutcome], code: str) -> dg.DataVersion:
    return model_version([o for o in outcomes if o.code == code])


def build_nfi_pca_assets(config: PipelineConfig, lookback: timedelta = AUTOMATION_LOOKBACK) -> dg.AssetsDefinition:
    """Build the NFI PCA multi-asset on the configured batch windows."""
    settings = config.level2.nfi_pca
    grid = batch_partitions(settings.batch_hours)
    steps = settings.context_steps
    early = dg.AssetDep(
        level1_early_key(NFI),
        partition_mapping=dg.TimeWindowPartitionMapping(-steps, steps, allow_nonexistent_upstream_partitions=True),
    )
    common = {
        "group_name": "level2",
        "code_version": LEVEL2_NFI_PCA_CODE_VERSION,
        "automation_condition": on_new_inputs(lookback),
        "kinds": {"fits", "punchbowl"},
        "partitions_def": grid,
        "deps": [early, calibration_key("mask", NFI)],
    }
    what = (
        f"of NFI batches ({settings.batch_hours} h windows, {settings.context_before}+{settings.context_after} "
        "context frames) by punchbowl's level2_pca_core_flow"
    )
    specs = [
        dg.AssetSpec(LEVEL2_CNN, tags={"level": "2", "observatory": "N"}, description=f"Level 2 CNN {what}.", **common),
        dg.AssetSpec(PCA_COMPONENTS, tags={"level": "1", "observatory": "4"}, description=f"AR4 {what}.", **common),
        dg.AssetSpec(PCA_BACKGROUND, tags={"level": "1", "observatory": "4"}, description=f"SR4 {what}.", **common),
    ]

    @dg.multi_asset(
        name="level2_nfi_pca",
        specs=specs,
        check_specs=[models_made_spec(LEVEL2_CNN)],
        partitions_def=grid,
        **pool_kwargs(PUNCHBOWL_LARGE_MEMORY_POOL),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    )
    def level2_nfi_pca(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> Iterator:
        outcomes = []
        for partition_key in context.partition_keys:
            window = grid.time_window_for_partition_key(partition_key)
            now = utcnow()
            with catalog.session() as session:
                processor = PcaBatchProcessor(session, archive, pipeline.config, context.run.run_id)
                made = processor.process_window(naive_utc(window.start), naive_utc(window.end), partition_key, now)
                # The waits sensor requests the window again (the whole multi-asset) once a batch's wait is over.
                waits = [(o.deadline, o.reason) for o in made if o.status == "waiting" and o.deadline > now]
                record_waits(session, LEVEL2_CNN, partition_key, waits)
            for outcome in made:
                if outcome.status in ("failed", "refused", "waiting"):
                    (context.log.error if outcome.status == "failed" else context.log.info)(outcome.reason)
            for code, key in OUTPUT_KEYS.items():
                mine = [o for o in made if o.code == code or (code == "CN" and not o.path)]
                context.add_asset_metadata(
                    with_quicklook(model_metadata(mine), archive), asset_key=key, partition_key=partition_key
                )
            outcomes.extend(made)
        for code, key in OUTPUT_KEYS.items():
            yield dg.MaterializeResult(asset_key=key, data_version=_version(outcomes, code))
        yield models_check(LEVEL2_CNN, [o for o in outcomes if o.code == "CN"])

    return level2_nfi_pca
