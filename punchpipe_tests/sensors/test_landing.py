"""The landing sensor on real catalogs: new files, bad input, restarts."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import func, select

from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.resources import build_resources
from punchpipe_assets.resources.catalog import Packet, TelemetryFile
from punchpipe_assets.sensors.landing import level0_work_in_progress, scan_landing
from punchpipe_assets.simulate import simulate
from punchpipe_assets.telemetry import frame_packets, load_packet_set
from punchpipe_tests.conftest import SIMULATION_START

SIZE = 64


@pytest.fixture(scope="module")
def downlinks(tmp_path_factory) -> dict:
    """One short simulation with every kind of damage, shared by the tests (read-only)."""
    out = tmp_path_factory.mktemp("sim")
    report = simulate(
        SIMULATION_START, 0.1, out, size=SIZE, seed=5, duplicate_fraction=0.05, damage=True, packet_payload_bytes=512
    )
    return {"report": report, "files": {path.name: path for path in report.files}}


def land(config, *paths: Path, name: str | None = None) -> Path:
    target = Path(config.landing_dir) / (name or paths[0].name)
    for path in paths:
        shutil.copy(path, Path(config.landing_dir) / (name or path.name))
    return target


def telemetry_row(catalog, name: str) -> TelemetryFile:
    with catalog.session() as session:
        return session.scalars(select(TelemetryFile).where(TelemetryFile.name == name)).one()


def packet_count(catalog, name: str, **filters) -> int:
    with catalog.session() as session:
        query = select(func.count()).select_from(Packet).join(TelemetryFile).where(TelemetryFile.name == name)
        for key, value in filters.items():
            query = query.where(getattr(Packet, key) == value)
        return session.scalar(query)


def test_new_files_are_registered_once_and_request_their_hours(config, catalog, downlinks):
    clean = downlinks["files"]["PUNCH_TLM_2_20250801120000.tlm"]
    land(config, clean)
    scan = scan_landing(catalog, config)
    assert [r.name for r in scan.ingested] == [clean.name]
    row = telemetry_row(catalog, clean.name)
    assert row.state == "ingested" and row.reason is None
    assert row.n_packets == len(frame_packets(clean.read_bytes(), load_packet_set()).packets)
    assert [(r.partition_keys, r.observatories) for r in scan.requests] == [
        (("2025-08-01-11:00", "2025-08-01-12:00"), ["2"])
    ]
    again = scan_landing(catalog, config)  # a restart: nothing new, nothing lost
    assert again.ingested == [] and again.run_key == scan.run_key
    assert packet_count(catalog, clean.name) == row.n_packets


def test_garbage_file_is_quarantined_and_the_sensor_carries_on(config, catalog, downlinks):
    garbage = land(config, downlinks["files"]["PUNCH_TLM_9_garbage.tlm"])
    good = land(config, downlinks["files"]["PUNCH_TLM_3_20250801120000.tlm"])
    scan = scan_landing(catalog, config)
    assert {r.name: r.state for r in scan.ingested} == {garbage.name: "quarantined", good.name: "ingested"}
    row = telemetry_row(catalog, garbage.name)
    assert "not a CCSDS packet" in row.reason and row.n_packets == 0
    assert not garbage.exists()
    quarantined = Path(config.quarantine_dir) / garbage.name
    assert quarantined.read_bytes() == downlinks["files"][garbage.name].read_bytes()
    assert "not a CCSDS packet" in quarantined.with_name(garbage.name + ".reason.txt").read_text()


def test_truncated_file_gives_up_its_good_packets(config, catalog, downlinks):
    report = downlinks["report"]
    (damaged_path, _), *_ = [d for d in report.damaged if d[0].name.startswith("PUNCH_TLM_1_")]
    land(config, damaged_path)
    scan_landing(catalog, config)
    row = telemetry_row(catalog, damaged_path.name)
    framed = frame_packets(damaged_path.read_bytes(), load_packet_set())
    assert row.state == "partial" and "truncated packet" in row.reason
    assert row.damaged_bytes == framed.damaged_bytes > 0
    assert packet_count(catalog, damaged_path.name) == len(framed.packets) > 0


def test_unknown_apid_ends_the_readable_part(config, catalog, downlinks):
    clean = downlinks["files"]["PUNCH_TLM_4_20250801120000.tlm"]
    spliced = Path(config.landing_dir) / "PUNCH_TLM_4_spliced.tlm"
    packets = frame_packets(clean.read_bytes(), load_packet_set()).packets
    cut = packets[10].offset
    data = clean.read_bytes()
    spliced.write_bytes(data[:cut] + bytes([0x07, 0xFF, 0xC0, 0x00, 0x00, 0x03, 1, 2, 3, 4]) + data[cut:])
    os.utime(spliced, (time.time() - 60, time.time() - 60))
    scan_landing(catalog, config)
    row = telemetry_row(catalog, spliced.name)
    assert row.state == "partial" and "unknown APID 0x7ff" in row.reason and row.damaged_offset == cut
    assert packet_count(catalog, spliced.name) == 10


def test_duplicate_file_adds_nothing(config, catalog, downlinks):
    clean = downlinks["files"]["PUNCH_TLM_2_20250801120000.tlm"]
    land(config, clean)
    first = scan_landing(catalog, config)
    land(config, clean, name="PUNCH_TLM_2_copy.tlm")
    scan = scan_landing(catalog, config)
    row = telemetry_row(catalog, "PUNCH_TLM_2_copy.tlm")
    assert row.state == "duplicate" and row.reason == f"identical to {clean.name}"
    assert packet_count(catalog, "PUNCH_TLM_2_copy.tlm") == 0
    assert scan.run_key == first.run_key  # no new work: Dagster launches nothing more


def test_duplicated_and_replayed_packets_are_skipped_with_reason(config, catalog, downlinks):
    report = downlinks["report"]
    for path in report.files:
        if "garbage" not in path.name:
            land(config, path)
    scan_landing(catalog, config)
    with catalog.session() as session:
        duplicates = session.scalars(select(Packet).where(Packet.state == "skipped")).all()
    assert len(duplicates) == report.duplicated_packets > 0
    assert all(p.reason.startswith("duplicate: replayed copy of packet") for p in duplicates)


def test_files_still_being_written_wait(config, catalog, downlinks):
    config.sensor.settle_seconds = 30
    source = downlinks["files"]["PUNCH_TLM_2_20250801120000.tlm"]
    partial_name = Path(config.landing_dir) / ".PUNCH_TLM_2_20250801120000.tlm.part"
    shutil.copy(source, partial_name)
    fresh = land(config, downlinks["files"]["PUNCH_TLM_3_20250801120000.tlm"])
    scan = scan_landing(catalog, config)
    assert scan.ingested == [] and scan.unsettled == 1
    os.utime(fresh, (time.time() - 60, time.time() - 60))
    assert [r.name for r in scan_landing(catalog, config).ingested] == [fresh.name]


def test_empty_file_is_quarantined(config, catalog):
    empty = Path(config.landing_dir) / "PUNCH_TLM_1_empty.tlm"
    empty.write_bytes(b"")
    scan_landing(catalog, config)
    assert telemetry_row(catalog, empty.name).state == "quarantined"
    assert telemetry_row(catalog, empty.name).reason == "empty file"


def test_sensor_through_dagster_requests_runs_and_reports_telemetry(config, instance, downlinks):
    land(config, downlinks["files"]["PUNCH_TLM_1_20250801120000.tlm"])
    land(config, downlinks["files"]["PUNCH_TLM_4_20250801120000.tlm"])
    definitions = build_definitions(config)
    sensor = definitions.resolve_sensor_def("telemetry_landing_sensor")
    with dg.build_sensor_context(
        instance=instance, definitions=definitions, resources=build_resources(config)
    ) as context:
        result = sensor(context)
    (request,) = result.run_requests
    assert {key.to_user_string() for key in request.asset_selection} == {"level0_wfi1", "level0_nfi4"}
    assert request.tags["dagster/asset_partition_range_start"] == "2025-08-01-11:00"
    assert request.tags["dagster/asset_partition_range_end"] == "2025-08-01-12:00"
    assert {event.asset_key.to_user_string() for event in result.asset_events} == {"telemetry_wfi1", "telemetry_nfi4"}


def test_work_already_queued_or_running_is_not_requested_again(config, catalog, instance, downlinks):
    land(config, downlinks["files"]["PUNCH_TLM_1_20250801120000.tlm"])
    land(config, downlinks["files"]["PUNCH_TLM_2_20250801120000.tlm"])
    running = dg.DagsterRun(
        job_name="level0_job",
        run_id="0" * 8 + "-0000-0000-0000-" + "0" * 12,
        status=dg.DagsterRunStatus.STARTED,
        asset_selection=frozenset({dg.AssetKey("level0_wfi1")}),
        tags={
            "dagster/asset_partition_range_start": "2025-08-01-11:00",
            "dagster/asset_partition_range_end": "2025-08-01-12:00",
        },
    )
    instance.add_run(running)
    busy = level0_work_in_progress(instance)
    assert busy == {("1", datetime(2025, 8, 1, 11)), ("1", datetime(2025, 8, 1, 12))}
    scan = scan_landing(catalog, config, busy=busy)
    assert [(r.partition_keys, r.observatories) for r in scan.requests] == [
        (("2025-08-01-11:00", "2025-08-01-12:00"), ["2"])
    ]


def test_a_tick_registers_at_most_max_files_per_tick_oldest_first_and_the_next_tick_the_rest(
    config, catalog, instance, downlinks
):
    """Register at most ``sensor.max_files_per_tick`` files per evaluation; the cursor says how many wait."""
    config.sensor.max_files_per_tick = 2
    names = [f"PUNCH_TLM_{obs}_20250801120000.tlm" for obs in "4132"]  # landed in this order
    for age, name in enumerate(names):
        landed = land(config, downlinks["files"][name])
        os.utime(landed, (time.time() - 600 + age, time.time() - 600 + age))
    definitions = build_definitions(config)
    sensor = definitions.resolve_sensor_def("telemetry_landing_sensor")

    def tick() -> tuple[set[str], dict]:
        with dg.build_sensor_context(
            instance=instance, definitions=definitions, resources=build_resources(config)
        ) as context:
            result = sensor(context)
        registered = {event.metadata["file"].value for event in result.asset_events}
        cursor = json.loads(result.cursor)
        return registered, {key: cursor[key] for key in ("registered", "remaining")}

    assert tick() == (set(names[:2]), {"registered": 2, "remaining": 2})
    with catalog.session() as session:
        assert set(session.scalars(select(TelemetryFile.name))) == set(names[:2])
    assert tick() == (set(names[2:]), {"registered": 2, "remaining": 0})
    assert tick() == (set(), {"registered": 0, "remaining": 0})
    assert packet_count(catalog, names[-1]) == telemetry_row(catalog, names[-1]).n_packets > 0
