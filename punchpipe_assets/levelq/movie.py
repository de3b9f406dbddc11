"""The daily movie of QuickPUNCH CTM for forecasters: ``levelq_ctm_movie``.

One MP4 per UTC day (``PUNCH_LQ_MVM_{day}_v{version}.mp4`` under ``archive/Q/MVM/``) of every
CTM of the day in time order, rendered like the quicklooks (``punchpipe_assets.quicklook``),
written atomically and catalogued with one lineage row per CTM used; remade only when the day's
set of CTM changed.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import dagster as dg
import numpy as np
from PIL import Image
from sqlalchemy import select

from punchpipe_assets.automation import AUTOMATION_LOOKBACK, on_new_inputs
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.levelq.assets import LEVELQ_CTM
from punchpipe_assets.materialize import product_asset_kwargs
from punchpipe_assets.partitions import daily_partitions
from punchpipe_assets.products import catalog_product, existing_product, product_fingerprint
from punchpipe_assets.quicklook import read_image, render, write_movie
from punchpipe_assets.resources import ArchiveResource, CatalogResource, PipelineResource
from punchpipe_assets.resources.archive import sha256_of, write_atomically
from punchpipe_assets.resources.catalog import ProductFile, naive_utc

LEVELQ_CTM_MOVIE = dg.AssetKey("levelq_ctm_movie")
LEVELQ_MOVIE_CODE_VERSION = "levelq-ctm-movie-v1"
MOVIE_CODE = "MV"


@dataclass
class MovieOutcome:
    """The movie of one day: ``made``, ``unchanged`` or ``empty`` (no CTM), its file and frames."""

    status: str
    path: str | None = None
    sha256: str | None = None
    frames: list[dict] = field(default_factory=list)


def day_ctm(session, start: datetime, end: datetime) -> list[ProductFile]:
    """Return the Level Q CTM acquired in ``[start, end)``, in time order."""
    return list(
        session.scalars(
            select(ProductFile)
            .where(
                ProductFile.level == "Q",
                ProductFile.file_type == "CT",
                ProductFile.observatory == "M",
                ProductFile.state == "created",
                ProductFile.acquisition_time >= start,
                ProductFile.acquisition_time < end,
            )
            .order_by(ProductFile.date_obs)
        )
    )


def movie_frame(path, size: int, low: float, high: float) -> np.ndarray:
    """Render one CTM as a ``size`` x ``size`` grey movie frame."""
    pixels = render(read_image(path), size, low, high)
    if pixels.shape != (size, size):
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS))
    return pixels


def make_day_movie(
    session, archive: ArchiveResource, config: PipelineConfig, start: datetime, partition_key: str, run_id: str
) -> MovieOutcome:
    """Make (or confirm) the movie of one day's CTM."""
    frames = day_ctm(session, start, start + timedelta(days=1))
    described = [{"file": f.path.rsplit("/", 1)[-1], "sha256": f.sha256} for f in frames]
    if not frames:
        return MovieOutcome("empty")
    version, look = config.level0.file_version, config.quicklook
    fingerprint = product_fingerprint(LEVELQ_MOVIE_CODE_VERSION, look.movie_size, look.movie_fps, described)
    existing = existing_product(session, MOVIE_CODE, "M", start, version, level="Q")
    if existing is not None and existing.fingerprint == fingerprint and archive.holds_product(existing):
        return MovieOutcome("unchanged", existing.path, existing.sha256, described)
    pictures = [
        movie_frame(archive.absolute(f.path), look.movie_size, look.low_percentile, look.high_percentile)
        for f in frames
    ]
    path = archive.product_path("Q", MOVIE_CODE, "M", start, version, suffix="mp4")
    write_atomically(path, lambda temporary: write_movie(pictures, temporary, look.movie_fps))
    sha256 = sha256_of(path)
    catalog_product(
        session,
        existing,
        code=MOVIE_CODE,
        obs="M",
        date_obs=start,
        file_version=version,
        path=archive.relative(path),
        sha256=sha256,
        fingerprint=fingerprint,
        parents=frames,
        acquisition_time=start,
        partition_key=partition_key,
        run_id=run_id,
        level="Q",
    )
    return MovieOutcome("made", archive.relative(path), sha256, described)


def build_levelq_ctm_movie(config: PipelineConfig, lookback: timedelta = AUTOMATION_LOOKBACK) -> dg.AssetsDefinition:
    """Build ``levelq_ctm_movie``: daily partitions, each from the 24 hourly CTM partitions of its day."""
    kwargs = product_asset_kwargs("M", "Q")
    kwargs["kinds"] = {"mp4"}

    @dg.asset(
        key=LEVELQ_CTM_MOVIE,
        partitions_def=daily_partitions,
        code_version=LEVELQ_MOVIE_CODE_VERSION,
        deps=[dg.AssetDep(LEVELQ_CTM, partition_mapping=dg.TimeWindowPartitionMapping())],
        description="A daily movie (MP4) of the QuickPUNCH CTM for forecasters, every CTM of the day in time order; "
        "remade when the day's CTM change.",
        automation_condition=on_new_inputs(lookback),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
        **kwargs,
    )
    def levelq_ctm_movie(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        archive: ArchiveResource,
        pipeline: PipelineResource,
    ) -> dg.MaterializeResult:
        outcomes = []
        for partition_key in context.partition_keys:
            start = naive_utc(daily_partitions.time_window_for_partition_key(partition_key).start)
            with catalog.session() as session:
                outcome = make_day_movie(session, archive, pipeline.config, start, partition_key, context.run.run_id)
            context.add_asset_metadata(
                {
                    "status": outcome.status,
                    "movie": dg.MetadataValue.path(str(archive.absolute(outcome.path))) if outcome.path else "",
                    "frames": len(outcome.frames),
                    "input_ctm_files": dg.MetadataValue.json(outcome.frames),
                },
                partition_key=partition_key,
            )
            outcomes.append(outcome)
        digests = "|".join(sorted(f"{o.path}:{o.sha256}" for o in outcomes if o.path))
        return dg.MaterializeResult(data_version=dg.DataVersion(product_fingerprint(digests)[:24]))

    return levelq_ctm_movie
