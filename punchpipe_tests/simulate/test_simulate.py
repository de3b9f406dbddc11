"""Tests of the telemetry simulator."""

from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from punchpipe_assets.cameras import CAMERAS
from punchpipe_assets.simulate import GARBAGE_NAME, acquisition_schedule, simulate
from punchpipe_assets.telemetry import decode_image_payload, decode_packets, frame_packets, load_packet_set

START = datetime(2025, 8, 1, 12)
SIZE = 128
IMAGE_APID = load_packet_set().by_kind("image").apid


def read(path: Path) -> tuple[bytes, list]:
    """Read the bytes of a file and its framed packets, asserting it is undamaged."""
    data = path.read_bytes()
    framed = frame_packets(data, load_packet_set())
    assert framed.damage_reason is None, (path.name, framed.damage_reason)
    assert sum(p.length for p in framed.packets) == len(data)
    return data, framed.packets


def image_digests(paths: list[Path]) -> Counter:
    """Digests of all image packets in some files, with multiplicity."""
    return Counter(p.digest for path in paths for p in read(path)[1] if p.apid == IMAGE_APID)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    return out, simulate(START, 1.0, out, size=SIZE, seed=3, downlink_minutes=30, packet_payload_bytes=1024)


def test_schedule_is_mission_like():
    for camera in CAMERAS:
        schedule = acquisition_schedule(camera, START, START + timedelta(hours=1))
        assert Counter(code for _, code in schedule) == {"PM": 15, "PZ": 15, "PP": 15, "CR": 8, "DK": 1}
        assert schedule[0][0] == START + timedelta(seconds=3 * int(camera.obs))


def test_files_hold_complete_packets_and_images(baseline):
    out, report = baseline
    names = {f"PUNCH_TLM_{c.obs}_{t}.tlm" for c in CAMERAS for t in ("20250801120000", "20250801123000")}
    assert {p.name for p in out.iterdir()} == names
    assert {p.name for p in report.files} == names
    for camera in CAMERAS:
        firsts = [
            p
            for path in sorted(out.glob(f"PUNCH_TLM_{camera.obs}_*.tlm"))
            for p in read(path)[1]
            if p.apid == IMAGE_APID and p.seq_flag in (1, 3)
        ]
        assert 45 <= len(firsts) <= 56
        assert len(firsts) == sum(obs == camera.obs for obs, _, _ in report.images)
    assert not list(out.glob(".*.part"))


def test_one_image_decodes(baseline):
    out, report = baseline
    data, packets = read(out / "PUNCH_TLM_4_20250801120000.tlm")
    image_packets = [p for p in packets if p.apid == IMAGE_APID]
    first = next(i for i, p in enumerate(image_packets) if p.seq_flag == 1)
    last = next(i for i, p in enumerate(image_packets) if i > first and p.seq_flag == 2)
    raw = [data[p.offset : p.offset + p.length] for p in image_packets[first : last + 1]]
    decoded = decode_packets(load_packet_set().by_kind("image"), raw)
    image = decode_image_payload(b"".join(bytes(chunk) for chunk in decoded["SCI_XFI_IMG_DATA"]))
    assert image.shape == (SIZE, SIZE)
    assert 0 < image.max() <= 1023
    assert len(set(decoded["timestamp"])) == 1
    assert decoded["timestamp"][0] == next(t for obs, t, _ in report.images if obs == "4")
    assert set(np.diff(decoded["SCI_XFI_HDR_IMG_PKT_GRP"].astype(int)) % 256) == {1}


def test_gaps_are_filled_by_replay(baseline, tmp_path):
    out, _ = baseline
    report = simulate(
        START,
        1.0,
        tmp_path,
        size=SIZE,
        seed=3,
        downlink_minutes=30,
        packet_payload_bytes=1024,
        gap_fraction=0.2,
        replay=True,
        replay_duplicate_fraction=0.1,
    )
    regular = sorted(tmp_path.glob("PUNCH_TLM_?_2025????????00.tlm"))
    replays = sorted(tmp_path.glob("*_replay.tlm"))
    assert [p.name for p in replays] == [f"PUNCH_TLM_{c.obs}_20250801130000_replay.tlm" for c in CAMERAS]
    expected = image_digests(sorted(out.glob("*.tlm")))
    downlinked, replayed = image_digests(regular), image_digests(replays)
    assert report.dropped_packets > 0 and report.replayed_duplicates > 0
    assert sum(expected.values()) - sum(downlinked.values()) == report.dropped_packets
    assert sum(replayed.values()) == report.dropped_packets + report.replayed_duplicates
    assert set(downlinked) | set(replayed) == set(expected)
    assert set(downlinked) != set(expected)


def test_duplicates_follow_their_original(tmp_path):
    report = simulate(START, 0.25, tmp_path, size=SIZE, duplicate_fraction=0.1, packet_payload_bytes=1024)
    doubled = 0
    for path in tmp_path.glob("*.tlm"):
        packets = read(path)[1]
        doubled += sum(a.digest == b.digest for a, b in zip(packets, packets[1:], strict=False))
    assert doubled == report.duplicated_packets > 0


def test_damage(tmp_path):
    report = simulate(START, 0.25, tmp_path, size=SIZE, damage=True)
    reasons = {p.name: frame_packets(p.read_bytes(), load_packet_set()).damage_reason for p in tmp_path.iterdir()}
    damaged = {name: reason for name, reason in reasons.items() if reason}
    assert set(damaged) == {"PUNCH_TLM_1_20250801120000.tlm", GARBAGE_NAME}
    assert damaged["PUNCH_TLM_1_20250801120000.tlm"].startswith("truncated packet")
    assert damaged[GARBAGE_NAME].startswith("not a CCSDS packet")
    assert (tmp_path / GARBAGE_NAME).stat().st_size == 4096
    assert {p.name for p, _ in report.damaged} == set(damaged)


def test_same_seed_same_bytes(tmp_path):
    kwargs = dict(size=SIZE, seed=7, gap_fraction=0.1, replay=True, duplicate_fraction=0.05, damage=True)
    simulate(START, 0.25, tmp_path / "a", **kwargs)
    simulate(START, 0.25, tmp_path / "b", **kwargs)
    simulate(START, 0.25, tmp_path / "c", **(kwargs | {"seed": 8}))
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)
    assert (tmp_path / "a" / names[0]).read_bytes() != (tmp_path / "c" / names[0]).read_bytes()
