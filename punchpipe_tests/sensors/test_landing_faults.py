"""The landing folder's fault matrix: bad entries, files that grow, files still settling, unknown spacecraft."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import func, select

from punchpipe_assets.cameras import Camera
from punchpipe_assets.definitions import build_definitions
from punchpipe_assets.resources import build_resources
from punchpipe_assets.resources.catalog import Packet, TelemetryFile, TelemetryFileState
from punchpipe_assets.sensors.landing import scan_landing
from punchpipe_assets.simulate import simulate
from punchpipe_assets.status import catalog_status
from punchpipe_assets.telemetry import frame_packets, load_packet_set
from punchpipe_tests.conftest import SIMULATION_START

SIZE = 64
CLEAN = "PUNCH_TLM_2_20250801120000.tlm"


@pytest.fixture(scope="module")
def downlinks(tmp_path_factory) -> dict[str, Path]:
    """Clean simulated downlinks of the four spacecraft, and one of a spacecraft nobody knows."""
    out = tmp_path_factory.mktemp("sim")
    report = simulate(SIMULATION_START, 0.1, out, size=SIZE, seed=7, packet_payload_bytes=512)
    stranger = simulate(
        SIMULATION_START,
        0.1,
        out / "stranger",
        size=SIZE,
        seed=8,
        packet_payload_bytes=512,
        cameras=[Camera("9", "wfi9", 0x55)],
    )
    files = {path.name: path for path in report.files}
    files["stranger"] = stranger.files[0]
    return files


def settled(path: Path) -> Path:
    """Date a landing entry a minute back, past any settle time."""
    os.utime(path, (time.time() - 60, time.time() - 60), follow_symlinks=False)
    return path


def by_name(config) -> dict[str, dict]:
    """Return the status rows of the telemetry files, by name."""
    return {row["file"]: row for row in catalog_status(config)["telemetry"]}


def history(catalog, name: str) -> list[tuple[str, int]]:
    """(state, packets) of every state a file was in, oldest first."""
    with catalog.session() as session:
        return session.execute(
            select(TelemetryFileState.state, TelemetryFileState.n_packets)
            .join(TelemetryFile, TelemetryFileState.telemetry_file_id == TelemetryFile.id)
            .where(TelemetryFile.name == name)
            .order_by(TelemetryFileState.id)
        ).all()


def catalogued_packets(catalog, name: str) -> int:
    """Packets registered for a file."""
    with catalog.session() as session:
        query = select(func.count()).select_from(Packet).join(TelemetryFile).where(TelemetryFile.name == name)
        return session.scalar(query)


def test_bad_landing_entries_are_recorded_with_their_reason_and_the_others_go_on(config, catalog, instance, downlinks):
    """Quarantine or record every bad entry with its reason; never raise; the good file goes on."""
    landing, quarantine = Path(config.landing_dir), Path(config.quarantine_dir)
    shutil.copy(downlinks[CLEAN], landing / CLEAN)
    undecodable = os.path.join(os.fsencode(landing), b"PUNCH_\xff.tlm")
    descriptor = os.open(undecodable, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(descriptor, downlinks["PUNCH_TLM_3_20250801120000.tlm"].read_bytes())
    os.close(descriptor)
    os.utime(undecodable, (time.time() - 60, time.time() - 60))
    (landing / "PUNCH_TLM_folder.tlm").mkdir()
    (landing / "PUNCH_TLM_dangling.tlm").symlink_to(landing / "later" / "PUNCH_TLM_1_20250801120000.tlm")
    # A file whose every read fails with an I/O error, as root too (chmod 000 does not stop root).
    (landing / "PUNCH_TLM_eio.tlm").symlink_to("/proc/self/mem")
    if os.geteuid() != 0:
        locked = shutil.copy(downlinks["PUNCH_TLM_4_20250801120000.tlm"], landing / "PUNCH_TLM_locked.tlm")
        os.chmod(locked, 0)
    for entry in landing.iterdir():
        settled(entry)

    definitions = build_definitions(config)
    sensor = definitions.resolve_sensor_def("telemetry_landing_sensor")
    with dg.build_sensor_context(
        instance=instance, definitions=definitions, resources=build_resources(config)
    ) as context:
        result = sensor(context)  # never raises

    (request,) = result.run_requests  # the good file still goes on to Level 0
    assert {key.to_user_string() for key in request.asset_selection} == {"level0_wfi2"}
    rows = by_name(config)
    assert rows[CLEAN]["state"] == "ingested" and rows[CLEAN]["packets"] == catalogued_packets(catalog, CLEAN) > 0
    odd = rows["PUNCH_\\xff.tlm"]
    assert odd["state"] == "quarantined" and "name is not valid UTF-8 (b'PUNCH_\\xff.tlm')" in odd["reason"]
    assert not os.path.lexists(undecodable)
    (moved,) = [path for path in quarantine.iterdir() if path.name.startswith("PUNCH_xff~") and path.suffix == ".tlm"]
    assert moved.read_bytes() == downlinks["PUNCH_TLM_3_20250801120000.tlm"].read_bytes()
    with catalog.session() as session:
        record = session.scalars(select(TelemetryFile).where(TelemetryFile.name == "PUNCH_\\xff.tlm")).one()
        assert (record.path, record.sha256) == (moved.name, hashlib.sha256(moved.read_bytes()).hexdigest())
    assert "not valid UTF-8" in moved.with_name(moved.name + ".reason.txt").read_text()
    assert rows["PUNCH_TLM_folder.tlm"]["state"] == "quarantined"
    assert rows["PUNCH_TLM_folder.tlm"]["reason"] == "a directory, not a downlink file"
    assert (quarantine / "PUNCH_TLM_folder.tlm").is_dir() and not (landing / "PUNCH_TLM_folder.tlm").exists()
    dangling = rows["PUNCH_TLM_dangling.tlm"]
    assert dangling["state"] == "unreadable" and dangling["reason"].startswith("dangling symbolic link to ")
    assert rows["PUNCH_TLM_eio.tlm"] == {
        "file": "PUNCH_TLM_eio.tlm",
        "state": "unreadable",
        "reason": "cannot be read: Input/output error",
        "packets": 0,
    }
    if os.geteuid() != 0:
        assert rows["PUNCH_TLM_locked.tlm"]["reason"] == "cannot be read: Permission denied"

    # Unreadable entries stay and are tried again at every scan, recorded once per reason.
    assert scan_landing(catalog, config).ingested == []
    assert history(catalog, "PUNCH_TLM_dangling.tlm") == [("unreadable", 0)]
    target = landing / "later" / "PUNCH_TLM_1_20250801120000.tlm"
    target.parent.mkdir()
    shutil.copy(downlinks["PUNCH_TLM_1_20250801120000.tlm"], target)
    settled(target)
    scan = scan_landing(catalog, config)
    assert [(r.name, r.state) for r in scan.ingested] == [("PUNCH_TLM_dangling.tlm", "ingested")]
    assert [r.observatories for r in scan.requests] == [["1", "2"]]  # wfi2's hours not yet attempted
    assert history(catalog, "PUNCH_TLM_dangling.tlm") == [
        ("unreadable", 0),
        ("ingested", catalogued_packets(catalog, "PUNCH_TLM_dangling.tlm")),
    ]
    assert by_name(config)["PUNCH_TLM_dangling.tlm"]["history"][0]["state"] == "unreadable"


def test_file_of_an_unknown_spacecraft_says_every_packet_was_skipped_and_why(config, catalog, downlinks):
    """Record a stranger's downlink as skipped, with why, and request nothing."""
    shutil.copy(downlinks["stranger"], Path(config.landing_dir) / "PUNCH_TLM_9_20250801120000.tlm")
    scan = scan_landing(catalog, config)
    (result,) = scan.ingested
    n = len(frame_packets(downlinks["stranger"].read_bytes(), load_packet_set()).packets)
    assert result.state == "skipped" and result.skipped_packets == n and scan.requests == []
    row = by_name(config)["PUNCH_TLM_9_20250801120000.tlm"]
    assert row["state"] == "skipped"
    assert row["reason"] == f"every packet skipped ({n} unknown spacecraft id 0x55): nothing for Level 0"
    assert catalogued_packets(catalog, "PUNCH_TLM_9_20250801120000.tlm") == n  # each packet says why, too


def test_mixed_file_names_its_packets_of_an_unknown_spacecraft(config, catalog, downlinks):
    """Name the packets of an unknown spacecraft in a file's reason."""
    mixed = Path(config.landing_dir) / "PUNCH_TLM_mixed.tlm"
    mixed.write_bytes(downlinks[CLEAN].read_bytes() + downlinks["stranger"].read_bytes())
    scan_landing(catalog, config)
    strangers = len(frame_packets(downlinks["stranger"].read_bytes(), load_packet_set()).packets)
    total = catalogued_packets(catalog, mixed.name)
    row = by_name(config)[mixed.name]
    assert row["state"] == "ingested"
    assert row["reason"] == f"{strangers} of {total} packets skipped ({strangers} unknown spacecraft id 0x55)"


def test_downlink_registered_partial_that_grows_is_read_again(config, catalog, downlinks):
    """Register the packets a paused downlink gains, each once, keeping its state history."""
    data = downlinks[CLEAN].read_bytes()
    packets = frame_packets(data, load_packet_set()).packets
    landed = Path(config.landing_dir) / CLEAN
    landed.write_bytes(data[: packets[20].offset + 7])  # the writer paused inside packet 20
    first = scan_landing(catalog, config)
    assert [(r.state, r.n_packets) for r in first.ingested] == [("partial", 20)]
    with landed.open("ab") as handle:  # and goes on, past packet 40 exactly
        handle.write(data[packets[20].offset + 7 : packets[40].offset])
    settled(landed)
    second = scan_landing(catalog, config)
    assert [(r.state, r.n_packets) for r in second.ingested] == [("ingested", 20)]
    assert second.run_key != first.run_key and second.requests  # new packets: new Level 0 work
    landed.write_bytes(data)
    settled(landed)
    scan_landing(catalog, config)
    assert catalogued_packets(catalog, CLEAN) == len(packets)
    with catalog.session() as session:
        offsets = session.scalars(
            select(Packet.byte_offset)
            .join(TelemetryFile)
            .where(TelemetryFile.name == CLEAN)
            .order_by(Packet.index_in_file)
        ).all()
        row = session.scalars(select(TelemetryFile).where(TelemetryFile.name == CLEAN)).one()
    assert offsets == [p.offset for p in packets]  # each packet once, where it is
    assert (row.state, row.reason, row.size, row.n_packets) == ("ingested", None, len(data), len(packets))
    assert history(catalog, CLEAN) == [("partial", 20), ("ingested", 40), ("ingested", len(packets))]
    assert [h["state"] for h in by_name(config)[CLEAN]["history"]] == ["partial", "ingested", "ingested"]
    assert scan_landing(catalog, config).ingested == []  # nothing changed: nothing read


def test_duplicate_that_grows_registers_only_what_is_new(config, catalog, downlinks):
    """Read a grown duplicate again: the copied packets skipped as replays, the rest pending."""
    data = downlinks[CLEAN].read_bytes()
    cut = frame_packets(data, load_packet_set()).packets[30].offset
    (Path(config.landing_dir) / "PUNCH_TLM_2_a.tlm").write_bytes(data[:cut])
    (Path(config.landing_dir) / "PUNCH_TLM_2_b.tlm").write_bytes(data[:cut])
    scan_landing(catalog, config)
    assert by_name(config)["PUNCH_TLM_2_b.tlm"]["state"] == "duplicate"
    settled(Path(config.landing_dir) / "PUNCH_TLM_2_b.tlm").write_bytes(data)
    settled(Path(config.landing_dir) / "PUNCH_TLM_2_b.tlm")
    scan_landing(catalog, config)
    with catalog.session() as session:
        states = dict(
            session.execute(
                select(Packet.state, func.count())
                .join(TelemetryFile)
                .where(TelemetryFile.name == "PUNCH_TLM_2_b.tlm")
                .group_by(Packet.state)
            ).all()
        )
    total = len(frame_packets(data, load_packet_set()).packets)
    assert states == {"skipped": 30, "pending": total - 30}  # the first 30 are replays of file a
    assert history(catalog, "PUNCH_TLM_2_b.tlm")[0] == ("duplicate", 30)


def test_file_changed_in_place_is_not_read_again_and_says_why(config, catalog, downlinks):
    """Keep the registered packets of a file rewritten in place and say why it is not read."""
    data = bytearray(downlinks[CLEAN].read_bytes())
    landed = Path(config.landing_dir) / CLEAN
    landed.write_bytes(bytes(data[:-100]))
    scan_landing(catalog, config)
    before = catalogued_packets(catalog, CLEAN)
    data[-1] ^= 0xFF
    data[40] ^= 0xFF  # inside a registered packet
    landed.write_bytes(bytes(data))
    settled(landed)
    scan_landing(catalog, config)
    row = by_name(config)[CLEAN]
    assert row["reason"].startswith("changed after registration (1 registered packets differ): not read again")
    assert catalogued_packets(catalog, CLEAN) == before


def test_files_dropped_just_before_a_scan_are_reported_settling(config, catalog, downlinks):
    """Report files younger than settle_seconds as settling, *.part as writing."""
    config.sensor.settle_seconds = 30
    shutil.copy(downlinks[CLEAN], Path(config.landing_dir) / CLEAN)
    shutil.copy(downlinks[CLEAN], Path(config.landing_dir) / "PUNCH_TLM_3.tlm.part")
    (Path(config.landing_dir) / "notes.txt").write_text("not telemetry")
    scan = scan_landing(catalog, config)
    assert scan.ingested == [] and scan.unsettled == 1
    rows = by_name(config)
    assert rows[CLEAN]["state"] == "settling" and "read once unchanged for 30 s" in rows[CLEAN]["reason"]
    assert rows["PUNCH_TLM_3.tlm.part"]["state"] == "writing"
    settled(Path(config.landing_dir) / CLEAN)
    assert by_name(config)[CLEAN]["state"] == "waiting"
    scan_landing(catalog, config)
    assert by_name(config)[CLEAN]["state"] == "ingested"


def test_unreadable_files_never_hold_new_ones_back(config, catalog, downlinks):
    """Try files recorded unreadable after the new ones, within the per-tick limit."""
    config.sensor.max_files_per_tick = 1
    settled(
        (Path(config.landing_dir) / "PUNCH_TLM_eio.tlm").symlink_to("/proc/self/mem")
        or (Path(config.landing_dir) / "PUNCH_TLM_eio.tlm")
    )
    assert [r.state for r in scan_landing(catalog, config).ingested] == ["unreadable"]
    shutil.copy(downlinks[CLEAN], Path(config.landing_dir) / CLEAN)
    scan = scan_landing(catalog, config)
    assert [r.name for r in scan.ingested] == [CLEAN] and scan.remaining == 1
