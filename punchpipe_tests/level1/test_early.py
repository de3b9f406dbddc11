"""Early Level 1 through Dagster: calibration selection, lineage, incremental reprocessing."""

from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
from sqlalchemy import select

from punchpipe_assets.calibration.synthesize import synthesize_calibration
from punchpipe_assets.cameras import CAMERA_BY_OBS
from punchpipe_assets.cli import run_process
from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.level1 import early
from punchpipe_assets.level1.assets import level1_early_key
from punchpipe_assets.lineage import affected_products, find_product
from punchpipe_assets.resources import ArchiveResource
from punchpipe_assets.resources.catalog import FileRelationship, ProductFile
from punchpipe_assets.sensors.calibration import DeliveryResult, calibration_events, scan_calibration_landing
from punchpipe_assets.simulate import simulate
from punchpipe_tests.chain import mtimes
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.level0.test_assets import land

SIZE = 128
PARTITION = "2025-08-01-12:00"
CAMERA = CAMERA_BY_OBS["2"]


def level0_of(config, instance, start: datetime, hours: float, out: Path, seed: int, camera=CAMERA):
    """Simulate telemetry of one camera, land it and make its Level 0 through Dagster."""
    report = simulate(start, hours, out, size=SIZE, seed=seed, cameras=[camera])
    land(report.files, config)
    assert run_process(config, instance, show_progress=False)["failed_runs"] == 0
    return report


def materialize_level1(config, instance, partition: str = PARTITION) -> dg.ExecuteInProcessResult:
    definitions = build_definitions(config)
    job = definitions.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance, partition_key=partition, asset_selection=[level1_early_key(CAMERA)]
    )


def deliver(
    config, catalog, version: str, kinds=None, only: str | None = None, date: datetime | None = None
) -> list[DeliveryResult]:
    """Deliver a synthesized calibration set (or only the files of one product code)."""
    staging = Path(config.home) / f"staging-{version}"
    date = date or SIMULATION_START - timedelta(days=2)
    paths = synthesize_calibration(staging, date, file_version=version, size=SIZE, cameras=[CAMERA], kinds=kinds)
    for path in paths:
        if only is None or path.name.startswith(f"PUNCH_L1_{only}"):
            path.rename(Path(config.calibration_landing_dir) / path.name)
    return scan_calibration_landing(catalog, ArchiveResource(root=str(config.archive_dir)), config)


def level1_products(catalog) -> dict[str, ProductFile]:
    with catalog.session() as session:
        return {
            Path(p.path).name: p
            for p in session.scalars(
                select(ProductFile).where(ProductFile.level == "1", ProductFile.file_type.like("X%"))
            )
        }


def level0_files(catalog) -> list[ProductFile]:
    with catalog.session() as session:
        return list(session.scalars(select(ProductFile).where(ProductFile.level == "0")))


def test_level1_early_records_calibration_lineage_and_reprocesses_only_affected_frames(
    config, catalog, instance, tmp_path, monkeypatch
):
    config.calibration_image_size = SIZE
    report = level0_of(config, instance, SIMULATION_START, 0.1, tmp_path / "sim", seed=21)
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
    assert {name for name, *_ in metadata["input_calibration_files"].value} >= {
        "PUNCH_L1_GM2_20250730120000_v1.fits",
        "PUNCH_L1_DS2_20250730120000_v1.fits",
    }

    before = {name: (p.sha256, (config.archive_dir / p.path).stat().st_mtime_ns) for name, p in made.items()}
    deliver(config, catalog, "2", kinds=["vignetting"], only="GM")
    with catalog.session() as session:
        old_gm = find_product(session, "PUNCH_L1_GM2_20250730120000_v1.fits")
        affected = {Path(p.path).name for p in affected_products(session, old_gm)}
    assert affected == {name for name, p in made.items() if p.file_type == "XM"}

    assert materialize_level1(config, instance).success
    after = level1_products(catalog)
    rewritten = {
        name for name, p in after.items() if (config.archive_dir / p.path).stat().st_mtime_ns != before[name][1]
    }
    assert rewritten == affected  # exactly the frames made with the superseded vignetting file
    settled = mtimes(config, after.values())
    assert materialize_level1(config, instance).success  # nothing changed: nothing rewritten
    assert mtimes(config, level1_products(catalog).values()) == settled

    # A new early Level 1 code version: every frame is remade, no Level 0 file.
    level0_before = mtimes(config, level0_files(catalog))
    monkeypatch.setattr(early, "LEVEL1_EARLY_CODE_VERSION", "level1-early-next")
    assert materialize_level1(config, instance).success
    remade = mtimes(config, level1_products(catalog).values())
    assert set(remade) == set(settled) and all(remade[name] != settled[name] for name in settled)
    assert mtimes(config, level0_files(catalog)) == level0_before


def test_new_calibration_version_makes_exactly_the_affected_partitions_stale(config, catalog, instance, tmp_path):
    """A vignetting version dated inside the second hour: only that hour's partition goes stale."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._time import get_current_datetime

    config.calibration_image_size = SIZE
    start = SIMULATION_START + timedelta(minutes=44)  # frames in the 12:00 and 13:00 partitions
    level0_of(config, instance, start, 0.4, tmp_path / "sim", seed=5)
    first_delivery = deliver(config, catalog, "1")
    first_events = calibration_events(first_delivery)
    # Nothing made yet: each file is on record in the partition of its date only.
    assert {e.partition for e in first_events} == {"2025-07-30-12:00"} and len(first_events) == len(first_delivery)
    for event in first_events:
        instance.report_runless_asset_event(event)
    partitions = ["2025-08-01-12:00", "2025-08-01-13:00"]
    for partition in partitions:
        assert materialize_level1(config, instance, partition).success
    definitions = build_definitions(config)
    key = level1_early_key(CAMERA)

    def stale() -> dict[str, StaleStatus]:
        # What the UI's staleness reads (the e2e test asks the webserver through GraphQL).
        graph = definitions.resolve_asset_graph()
        view = AssetGraphView(
            temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
            instance=instance,
            asset_graph=graph,
        )
        resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
        return {partition: resolver.get_status(key, partition) for partition in partitions}

    assert stale() == dict.fromkeys(partitions, StaleStatus.FRESH)
    before = {name: (config.archive_dir / p.path).stat().st_mtime_ns for name, p in level1_products(catalog).items()}

    # GM v2, dated 13:00: version beats date from 13:00 on; earlier frames keep v1 (never used before its date).
    (result,) = deliver(config, catalog, "2", kinds=["vignetting"], only="GM", date=datetime(2025, 8, 1, 13))
    later_xm = {n for n, p in level1_products(catalog).items() if p.file_type == "XM" and p.date_obs.hour == 13}
    assert later_xm and result.affected == {"2025-08-01-13:00": sorted(later_xm)}
    events = calibration_events([result])
    assert [(e.asset_key.to_user_string(), e.partition) for e in events] == [
        ("calibration_vignetting_wfi2", "2025-08-01-13:00")
    ]
    for event in events:  # as the daemon stores a sensor's asset events
        instance.report_runless_asset_event(event)
    assert stale() == {"2025-08-01-12:00": StaleStatus.FRESH, "2025-08-01-13:00": StaleStatus.STALE}

    assert materialize_level1(config, instance, "2025-08-01-13:00").success
    after = level1_products(catalog)
    assert {n for n, p in after.items() if (config.archive_dir / p.path).stat().st_mtime_ns != before[n]} == later_xm
    assert stale() == dict.fromkeys(partitions, StaleStatus.FRESH)


def test_automation_carries_day_old_level0_to_level1_and_ignores_calibration(config, catalog, instance, tmp_path):
    """Check that Declarative Automation requests early Level 1 for day-old hours updated at Level 0.

    Once made, nothing more is requested; a new calibration version that makes an hour stale
    requests nothing either (reprocessing is an operator's backfill).
    """
    from datetime import UTC

    from punchpipe_assets.sensors.landing import scan_landing
    from punchpipe_tests.chain import materialize

    config.calibration_image_size = SIZE
    hour = (datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=26)).replace(minute=0, second=0, microsecond=0)
    partitions = {f"{hour:%Y-%m-%d-%H:%M}", f"{hour + timedelta(hours=1):%Y-%m-%d-%H:%M}"}
    definitions = build_definitions(config)
    key = level1_early_key(CAMERA)

    def requested(cursor):
        result = dg.evaluate_automation_conditions(
            defs=definitions, instance=instance, asset_selection=dg.AssetSelection.assets(key), cursor=cursor
        )
        return set(result.get_requested_partitions(key)), result.cursor

    nothing, cursor = requested(None)  # the first evaluation only sets the baseline
    assert nothing == set()
    for event in calibration_events(deliver(config, catalog, "1", date=hour - timedelta(days=2))):
        instance.report_runless_asset_event(event)
    # Level 0 made directly (not by `process`, which would also carry it on to Level 1).
    report = simulate(hour + timedelta(minutes=44), 0.4, tmp_path / "sim", size=SIZE, seed=5, cameras=[CAMERA])
    land(report.files, config)
    scan_landing(catalog, config, max_files=10**6)
    assert materialize(config, instance, [dg.AssetKey(f"level0_{CAMERA.slug}")], sorted(partitions)).success
    carried, cursor = requested(cursor)
    assert carried == partitions

    for partition in sorted(partitions):
        assert materialize_level1(config, instance, partition).success
    made, cursor = requested(cursor)
    assert made == set()
    later_xm = {
        n
        for n, p in level1_products(catalog).items()
        if p.file_type == "XM" and p.date_obs >= hour + timedelta(hours=1)
    }
    assert later_xm
    (result,) = deliver(config, catalog, "2", kinds=["vignetting"], only="GM", date=hour + timedelta(hours=1))
    assert sorted(result.affected) == [f"{hour + timedelta(hours=1):%Y-%m-%d-%H:%M}"]  # one hour is stale now
    for event in calibration_events([result]):
        instance.report_runless_asset_event(event)
    after_delivery, _ = requested(cursor)
    assert after_delivery == set()


def test_a_broken_frame_is_recorded_with_its_reason_and_the_others_are_made(config, catalog, instance, tmp_path):
    """A Level 0 file damaged in the archive fails alone: the run succeeds, the reason is on record."""
    config.calibration_image_size = SIZE
    level0_of(config, instance, SIMULATION_START, 0.1, tmp_path / "sim", seed=8)
    deliver(config, catalog, "1")
    with catalog.session() as session:
        level0 = session.scalars(
            select(ProductFile)
            .where(ProductFile.level == "0", ProductFile.file_type == "PZ")
            .order_by(ProductFile.date_obs)
        ).first()
        broken = config.archive_dir / level0.path
    intact = broken.read_bytes()
    broken.write_bytes(intact[:4000])  # a damaged file in the archive

    result = materialize_level1(config, instance)
    assert result.success
    (check,) = [  # where operators look: a warning with the reason (the hourly watchdog checks run too)
        c for c in result.get_asset_check_evaluations() if c.check_name == "frames_made"
    ]
    assert check.check_name == "frames_made" and not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert [f["frame"] for f in check.metadata["not_made"].value] == [broken.name]
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=level1_early_key(CAMERA), asset_partitions=[PARTITION]), limit=1
    ).records
    metadata = record.asset_materialization.metadata
    (not_made,) = metadata["not_made"].value
    assert not_made["level0"] == broken.name and not_made["status"] == "failed"
    assert "Error" in not_made["reason"] or "error" in not_made["reason"], not_made
    assert metadata["frames_failed"].value == 1 and metadata["frames_made"].value == len(level1_products(catalog)) > 0

    # The failed frame has no product: the partition's next materialization tries it again.
    made_first = metadata["frames_made"].value
    broken.write_bytes(intact)  # the file repaired
    assert materialize_level1(config, instance).success
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=level1_early_key(CAMERA)), limit=1
    ).records
    again = record.asset_materialization.metadata
    assert again["frames_failed"].value == 0 and len(level1_products(catalog)) == made_first + 1, again
    # Made: the repaired frame, and a frame it now despikes again (its neighbours changed); the rest unchanged.
    assert again["frames_made"].value + again["frames_unchanged"].value == made_first + 1, again
    assert 1 <= again["frames_made"].value < made_first + 1, again


def test_damaged_or_deleted_products_are_remade_and_a_damaged_neighbour_is_left_out(
    config, catalog, instance, tmp_path
):
    """Check that "unchanged" means the file on disk is the catalogued one (fault matrix).

    A deleted and a damaged early Level 1 file are remade at the next materialization; the frames
    that had a damaged Level 0 frame as a despike neighbour are made without it, with a warning
    naming it, instead of failing.
    """
    from punchpipe_assets.resources.archive import sha256_of

    config.calibration_image_size = SIZE
    level0_of(config, instance, SIMULATION_START, 0.25, tmp_path / "sim", seed=9)
    deliver(config, catalog, "1")
    assert materialize_level1(config, instance).success
    made = level1_products(catalog)
    deleted, damaged = sorted(made)[:2]
    (config.archive_dir / made[deleted].path).unlink()
    (config.archive_dir / made[damaged].path).write_bytes(b"not a FITS file")

    def last_metadata() -> dict:
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=level1_early_key(CAMERA), asset_partitions=[PARTITION]), limit=1
        ).records
        return {k: v.value for k, v in record.asset_materialization.metadata.items()}

    assert materialize_level1(config, instance).success
    value = last_metadata()
    assert value["frames_made"] == 2 and value["frames_unchanged"] == len(made) - 2, value
    for product in level1_products(catalog).values():
        assert sha256_of(config.archive_dir / product.path) == product.sha256

    with catalog.session() as session:
        frames = session.scalars(
            select(ProductFile)
            .where(ProductFile.level == "0", ProductFile.file_type == "PZ")
            .order_by(ProductFile.date_obs)
        ).all()
    assert len(frames) >= 3
    broken = config.archive_dir / frames[1].path
    broken.write_bytes(broken.read_bytes()[:4000])
    assert materialize_level1(config, instance).success
    value = last_metadata()
    # Its own product was made from the intact file and stays; its neighbours do without it.
    assert value["not_made"] == [] and value["frames_failed"] == 0, value
    warned = {w["level0"] for w in value["warnings"]}
    assert warned and broken.name not in warned, value
    assert all(f"despike neighbour {broken.name} left out" in w["warning"] for w in value["warnings"]), value
    assert value["frames_made"] == len(warned), value


def test_process_makes_early_level1_once_and_then_only_what_is_missing(config, catalog, instance, tmp_path):
    """Make recent data with ``punchpipe process``: deliveries, Level 0 and early Level 1 in one go.

    A second pass runs nothing; a new downlink makes only its own hour, every other product untouched.
    """
    from datetime import UTC

    config.calibration_image_size = SIZE
    hour = (datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    paths = synthesize_calibration(
        Path(config.calibration_landing_dir), hour - timedelta(days=2), size=SIZE, cameras=[CAMERA]
    )
    report = simulate(hour + timedelta(minutes=10), 0.1, tmp_path / "sim", size=SIZE, seed=4, cameras=[CAMERA])
    land(report.files, config)
    key = level1_early_key(CAMERA)

    def early_partitions_made() -> list[str]:
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000).records
        return sorted(r.asset_materialization.partition for r in records)

    first = run_process(config, instance, show_progress=False)
    assert first["failed_runs"] == 0 and first["calibration_files"] == len(paths)
    science = [when for _, when, code in report.images if code != "DK"]
    assert len(level1_products(catalog)) == len(science)
    assert early_partitions_made() == [f"{hour:%Y-%m-%d-%H:%M}"]
    before = {name: (config.archive_dir / p.path).stat().st_mtime_ns for name, p in level1_products(catalog).items()}

    second = run_process(config, instance, show_progress=False)
    assert (second["runs"], second["failed_runs"], second["files"], second["calibration_files"]) == (0, 0, 0, 0)

    later = simulate(hour + timedelta(hours=1, minutes=10), 0.1, tmp_path / "sim2", size=SIZE, seed=6, cameras=[CAMERA])
    land(later.files, config)
    third = run_process(config, instance, show_progress=False)
    assert third["failed_runs"] == 0 and third["runs"] > 0 and third["files"] == len(later.files)
    assert early_partitions_made() == [f"{hour:%Y-%m-%d-%H:%M}", f"{hour + timedelta(hours=1):%Y-%m-%d-%H:%M}"]
    after = level1_products(catalog)
    assert len(after) == len(science) + len([c for _, _, c in later.images if c != "DK"])
    assert {n: (config.archive_dir / after[n].path).stat().st_mtime_ns for n in before} == before


def test_a_changed_despike_neighbour_remakes_exactly_the_frames_it_despikes(config, catalog, instance, tmp_path):
    """Re-form a Level 0 frame from a later copy of its segments: it and its neighbours are remade, nothing else.

    Neighbours: frames of its product code within 15 minutes (at most six).
    """
    from punchpipe_assets.sensors.landing import scan_landing
    from punchpipe_tests.chain import materialize
    from punchpipe_tests.level0.test_image_packets import image_packets

    config.calibration_image_size = SIZE
    report = level0_of(config, instance, SIMULATION_START, 0.3, tmp_path / "sim", seed=23)
    deliver(config, catalog, "1")
    assert materialize_level1(config, instance).success
    made = level1_products(catalog)
    when = min(t for _, t, code in report.images if code == "PZ")
    (resent,) = simulate(SIMULATION_START, 0.3, tmp_path / "other", size=SIZE, seed=24, cameras=[CAMERA]).files
    (sent,) = report.files
    old_packets, new_packets = image_packets(sent.read_bytes()), image_packets(resent.read_bytes())
    assert [c for *_, c in old_packets[when]] == [c for *_, c in new_packets[when]]  # the same segments
    data = resent.read_bytes()
    (Path(config.landing_dir) / "PUNCH_TLM_2_resent.tlm").write_bytes(
        b"".join(data[offset : offset + length] for offset, length, _ in new_packets[when])
    )
    scan_landing(catalog, config, max_files=10**6)
    before = mtimes(config, made.values())
    materialize(config, instance, [dg.AssetKey(f"level0_{CAMERA.slug}")], [PARTITION])

    assert materialize_level1(config, instance).success
    window = timedelta(minutes=15)
    (centre,) = [p.date_obs for p in level0_files(catalog) if p.acquisition_time == when]
    touched = {n for n, p in made.items() if p.file_type == "XZ" and abs(p.date_obs - centre) <= window}
    assert len(touched) < sum(p.file_type == "XZ" for p in made.values())  # some frames of its code too far
    after = mtimes(config, level1_products(catalog).values())
    assert {n for n, mtime in after.items() if mtime != before[n]} == touched
