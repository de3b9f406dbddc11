"""Early Level 1 through Dagster: calibration selection, lineage, incremental reprocessing."""

from collections import Counter
from datetime import timedelta
from pathlib import Path

import dagster as dg
from sqlalchemy import select

from punchpipe_assets.assets.level1 import level1_early_key
from punchpipe_assets.calibration import synthesize_calibration
from punchpipe_assets.cameras import CAMERA_BY_OBS
from punchpipe_assets.cli import run_process
from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.lineage import affected_products, find_product
from punchpipe_assets.resources import ArchiveResource
from punchpipe_assets.resources.catalog import FileRelationship, ProductFile
from punchpipe_assets.sensors.calibration import scan_calibration_landing
from punchpipe_assets.simulate import simulate
from punchpipe_tests.assets.test_level0 import land
from punchpipe_tests.conftest import SIMULATION_START

SIZE = 128
PARTITION = "2025-08-01-12:00"
CAMERA = CAMERA_BY_OBS["2"]


def materialize_level1(config, instance) -> dg.ExecuteInProcessResult:
    definitions = build_definitions(config)
    job = definitions.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance, partition_key=PARTITION, asset_selection=[level1_early_key(CAMERA)]
    )


def deliver(config, catalog, version: str, kinds=None, only: str | None = None) -> None:
    """Deliver a synthesized calibration set (or only the files of one product code)."""
    staging = Path(config.home) / f"staging-{version}"
    paths = synthesize_calibration(
        staging, SIMULATION_START - timedelta(days=2), file_version=version, size=SIZE, cameras=[CAMERA], kinds=kinds
    )
    for path in paths:
        if only is None or path.name.startswith(f"PUNCH_L1_{only}"):
            path.rename(Path(config.calibration_landing_dir) / path.name)
    scan_calibration_landing(catalog, ArchiveResource(root=str(config.archive_dir)), config)


def level1_products(catalog) -> dict[str, ProductFile]:
    with catalog.session() as session:
        return {
            Path(p.path).name: p
            for p in session.scalars(
                select(ProductFile).where(ProductFile.level == "1", ProductFile.file_type.like("X%"))
            )
        }


def test_level1_early_records_calibration_lineage_and_reprocesses_only_affected_frames(
    config, catalog, instance, tmp_path
):
    config.calibration_image_size = SIZE
    report = simulate(SIMULATION_START, 0.1, tmp_path / "sim", size=SIZE, seed=21, cameras=[CAMERA])
    land(report.files, config)
    assert run_process(config, instance, show_progress=False)["failed_runs"] == 0
    deliver(config, catalog, "1")

    assert materialize_level1(config, instance).success
    made = level1_products(catalog)
    science = Counter(code for obs, _, code in report.images if code != "DK")
    assert Counter(name.split("_")[2][:2] for name in made) == Counter("X" + code[1] for code in science.elements())
    with catalog.session() as session:
        product = next(p for p in made.values() if p.file_type == "XM")
        parents = session.scalars(
            select(ProductFile)
            .join(FileRelationship, FileRelationship.parent_id == ProductFile.id)
            .where(FileRelationship.child_id == product.id)
        ).all()
        assert {p.file_type for p in parents} == {"PM", "FM", "GM", "RM", "DS"}  # no mask below 2048 px
    (materialization,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=level1_early_key(CAMERA), asset_partitions=[PARTITION]), limit=5
    ).records
    metadata = materialization.asset_materialization.metadata
    assert metadata["frames_made"].value == len(made) and metadata["frames_failed"].value == 0
    assert {name for name, _, _ in metadata["input_calibration_files"].value} >= {
        "PUNCH_L1_GM2_20250730120000_v1.fits",
        "PUNCH_L1_DS2_20250730120000_v1.fits",
    }

    before = {name: (p.sha256, Path(p.path).stat().st_mtime_ns) for name, p in made.items()}
    deliver(config, catalog, "2", kinds=["vignetting"], only="GM")
    with catalog.session() as session:
        old_gm = find_product(session, "PUNCH_L1_GM2_20250730120000_v1.fits")
        affected = {Path(p.path).name for p in affected_products(session, old_gm)}
    assert affected == {name for name, p in made.items() if p.file_type == "XM"}

    assert materialize_level1(config, instance).success
    after = level1_products(catalog)
    rewritten = {name for name, p in after.items() if Path(p.path).stat().st_mtime_ns != before[name][1]}
    assert rewritten == affected  # exactly the frames made with the superseded vignetting file
    assert materialize_level1(config, instance).success  # nothing changed: nothing rewritten
    assert {name: Path(p.path).stat().st_mtime_ns for name, p in level1_products(catalog).items()} == {
        name: Path(p.path).stat().st_mtime_ns for name, p in after.items()
    }
