"""Level 0 through Dagster on real instances and catalogs (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path

import dagster as dg
import yaml
from astropy.io import fits
from click.testing import CliRunner
from sqlalchemy import func, select

from punchpipe_assets.cameras import CAMERA_BY_SPACECRAFT_ID
from punchpipe_assets.cli import catalog_status, main, run_process
from punchpipe_assets.lineage import find_product, lineage_tree
from punchpipe_assets.resources.archive import sha256_of
from punchpipe_assets.resources.catalog import FilePacket, Packet, ProductFile, TelemetryFile
from punchpipe_assets.sensors.landing import scan_landing
from punchpipe_assets.simulate import simulate
from punchpipe_assets.telemetry.ingest import hour_of
from punchpipe_tests.conftest import SIMULATION_START

SIZE = 128
PARTITION = "2025-08-01-12:00"


def land(files: list[Path], config) -> None:
    """Move simulated downlinks into the landing folder."""
    for path in files:
        shutil.copy(path, Path(config.landing_dir) / path.name)


def level0_materializations(instance: dg.DagsterInstance, slug: str, partition: str) -> list:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(f"level0_{slug}"), asset_partitions=[partition]), limit=100
    ).records
    return [record.asset_materialization for record in records]


def test_telemetry_becomes_level0_with_lineage(config, catalog, instance, tmp_path):
    report = simulate(SIMULATION_START, 0.25, tmp_path / "sim", size=SIZE, seed=1)
    land(report.files, config)

    summary = run_process(config, instance, show_progress=False)

    assert summary["failed_runs"] == 0 and summary["files"] == 4
    expected = Counter(f"{code}{obs}" for obs, _, code in report.images)
    assert catalog_status(config)["levels"]["0"] == dict(expected)
    with catalog.session() as session:
        products = session.scalars(select(ProductFile)).all()
        image_states = dict(
            session.execute(
                select(Packet.state, func.count()).where(Packet.kind == "image").group_by(Packet.state)
            ).all()
        )
        assert image_states == {"used": session.scalar(select(func.count()).where(Packet.kind == "image"))}
        product = next(p for p in products if p.observatory == "2")
        lineage = session.execute(
            select(FilePacket.role, TelemetryFile.name)
            .join(Packet, FilePacket.packet_id == Packet.id)
            .join(TelemetryFile, Packet.telemetry_file_id == TelemetryFile.id)
            .where(FilePacket.file_id == product.id)
        ).all()
    assert {role for role, _ in lineage} == {"image", "filter_wheel", "attitude"}
    assert {name for _, name in lineage} == {"PUNCH_TLM_2_20250801120000.tlm"}

    with fits.open(config.archive_dir / product.path) as hdul:
        header = hdul[1].header
        assert header["LEVEL"] == "0" and str(header["OBSCODE"]) == "2"
        assert header["TYPECODE"] == product.file_type
        assert hdul[1].data.shape == (SIZE, SIZE) and hdul[1].data.max() <= 1023
        header_packets = header["NUM_PCKT"]
    for made in products:  # archive/0/{code}{obs}/YYYY/MM/DD/PUNCH_L0_{code}{obs}_{time}_v1.fits
        code = f"{made.file_type}{made.observatory}"
        name = f"PUNCH_L0_{code}_{made.date_obs:%Y%m%d%H%M%S}_v1.fits"
        assert made.path == f"0/{code}/{made.date_obs:%Y/%m/%d}/{name}", made.path

    with catalog.session() as session:
        tree = lineage_tree(session, find_product(session, Path(product.path).name))
    assert tree["telemetry"][0]["file"] == "PUNCH_TLM_2_20250801120000.tlm"
    assert tree["telemetry"][0]["packets"]["image"] == header_packets

    config_file = tmp_path / "punchpipe.yaml"
    config_file.write_text(yaml.safe_dump({"home": str(config.home), "catalog_url": config.catalog_url}))
    printed = CliRunner().invoke(main, ["--config", str(config_file), "status", "--json"])
    status = json.loads(printed.output)
    assert status["levels"]["0"] == dict(expected)
    assert {(t["file"], t["state"], t["reason"]) for t in status["telemetry"]} == {
        (path.name, "ingested", None) for path in report.files
    }

    (materialization,) = level0_materializations(instance, "wfi2", PARTITION)
    metadata = materialization.metadata
    assert metadata["frames_made"].value == sum(n for code, n in expected.items() if code.endswith("2"))
    outputs = metadata["outputs"].value
    assert {o["path"] for o in outputs} == {p.path for p in products if p.observatory == "2"}
    for output in outputs:  # the checksum of the bytes on disk
        assert sha256_of(config.archive_dir / output["path"]) == output["sha256"], output
    assert metadata["input_telemetry_files"].value == ["PUNCH_TLM_2_20250801120000.tlm"]
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("level0_wfi2"), "image_quality")]
    )
    assert check[dg.AssetCheckKey(dg.AssetKey("level0_wfi2"), "image_quality")].status.value == "SUCCEEDED"


def test_replay_fills_gaps_and_leaves_complete_images_untouched(config, catalog, instance, tmp_path):
    config.level0.replay_wait_hours = 24.0
    report = simulate(
        SIMULATION_START,
        0.25,
        tmp_path / "sim",
        size=SIZE,
        seed=2,
        gap_fraction=0.05,
        packet_payload_bytes=1024,
        replay=True,
        replay_duplicate_fraction=0.05,
    )
    regular = [f for f in report.files if not f.name.endswith("_replay.tlm")]
    replays = [f for f in report.files if f.name.endswith("_replay.tlm")]
    assert report.dropped_packets > 0 and replays
    land(regular, config)
    run_process(config, instance, show_progress=False)

    with catalog.session() as session:
        waiting = session.scalars(select(Packet).where(Packet.kind == "image", Packet.state == "pending")).all()
        assert waiting and all(p.reason.startswith("waiting for replay") for p in waiting)
        waiting_hours = {(CAMERA_BY_SPACECRAFT_ID[p.spacecraft_id].obs, hour_of(p.timestamp)) for p in waiting}
        made_before = {
            p.path: (p.sha256, (config.archive_dir / p.path).stat().st_mtime_ns)
            for p in session.scalars(select(ProductFile))
        }
    assert 0 < len(made_before) < len(report.images)

    # While the replay wait lasts, nothing is requested again; once it is over (the downlinks
    # registered longer ago than the wait), the sensor requests the waiting images' hours again.
    assert scan_landing(catalog, config).requests == []
    day = timedelta(hours=25)
    with catalog.session() as session:  # a day passes: registration and Level 0's attempt are older than the wait
        rows = [*session.scalars(select(TelemetryFile)), *session.scalars(select(Packet))]
        for row in rows:
            if isinstance(row, TelemetryFile):
                row.registered_at -= day
            elif row.last_attempt is not None:
                row.last_attempt -= day
    requested = {
        (obs, request.first_hour + timedelta(hours=n))
        for request in scan_landing(catalog, config).requests
        for n in range(int((request.last_hour - request.first_hour) / timedelta(hours=1)) + 1)
        for obs in request.observatories
    }
    assert requested == waiting_hours
    with catalog.session() as session:  # the wait as it was, for the replay
        for row in [*session.scalars(select(TelemetryFile)), *session.scalars(select(Packet))]:
            if isinstance(row, TelemetryFile):
                row.registered_at += day
            elif row.last_attempt is not None:
                row.last_attempt += day

    land(replays, config)
    run_process(config, instance, show_progress=False)

    with catalog.session() as session:
        products = session.scalars(select(ProductFile)).all()
        states = Counter(
            (p.state, (p.reason or "").split(" ")[0])
            for p in session.scalars(select(Packet).where(Packet.kind == "image"))
        )
    assert len(products) == len(report.images)
    assert states[("used", "")] > 0 and ("pending", "waiting") not in states
    assert states[("skipped", "duplicate:")] == report.replayed_duplicates
    assert set(made_before) <= {product.path for product in products}
    for path, (sha256, mtime_ns) in made_before.items():  # complete before the replay: not rewritten
        assert (config.archive_dir / path).stat().st_mtime_ns == mtime_ns, path
        assert sha256_of(config.archive_dir / path) == sha256, path
    statuses = {m.metadata["frames_unchanged"].value for m in level0_materializations(instance, "wfi1", PARTITION)}
    assert max(statuses) > 0


def test_missing_packets_after_wait_are_flagged_not_lost(config, catalog, instance, tmp_path):
    report = simulate(
        SIMULATION_START, 0.25, tmp_path / "sim", size=SIZE, seed=3, gap_fraction=0.05, packet_payload_bytes=1024
    )
    land(report.files, config)
    run_process(config, instance, show_progress=False)  # replay wait 0: give up at once

    with catalog.session() as session:
        total = session.scalar(select(func.count()).select_from(Packet))
        accounted = session.scalar(
            select(func.count()).where(
                (Packet.state == "used") | ((Packet.state == "skipped") & Packet.reason.is_not(None))
            )
        )
        skipped = session.scalars(select(Packet).where(Packet.state == "skipped", Packet.kind == "image")).all()
        pending = session.scalar(select(func.count()).where(Packet.state == "pending"))
    assert accounted == total
    assert skipped and all("missing" in p.reason for p in skipped)
    assert pending == 0  # every packet used or skipped with a reason
    check_key = dg.AssetCheckKey(dg.AssetKey("level0_wfi1"), "image_quality")
    executions = instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key])
    evaluation = executions[check_key].event.dagster_event.event_specific_data
    assert not evaluation.passed and evaluation.metadata["not_formed_count"].value > 0


def test_level0_remade_with_nothing_changed_keeps_its_data_version(config, catalog, instance, tmp_path):
    """Re-materialize Level 0 with unchanged telemetry: same data version, so nothing downstream is stale.

    Dagster gives every partition of a run the run's one data version (tags are per step, not per
    partition), so the re-run covers the same partitions as the sensor's run did.
    """
    from punchpipe_tests.chain import materialize

    report = simulate(SIMULATION_START, 0.1, tmp_path / "sim", size=SIZE, seed=3)
    land(report.files, config)
    assert run_process(config, instance, show_progress=False)["failed_runs"] == 0
    key = dg.AssetKey("level0_wfi1")
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=100).records
    first = {r.asset_materialization.partition: r.asset_materialization for r in records}
    assert first[PARTITION].metadata["frames_made"].value > 0
    assert materialize(config, instance, [key], sorted(first)).success
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=100).records
    second = {r.asset_materialization.partition: r.asset_materialization for r in records[: len(first)]}
    assert set(second) == set(first)
    assert second[PARTITION].metadata["frames_made"].value == 0
    assert second[PARTITION].metadata["frames_unchanged"].value > 0
    for partition, materialization in second.items():
        assert materialization.tags["dagster/data_version"] == first[partition].tags["dagster/data_version"]
