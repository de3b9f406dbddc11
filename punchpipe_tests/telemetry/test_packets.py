"""The packet set: definitions read with ccsdspy, framing, times."""

from datetime import datetime

import numpy as np
import pytest

from punchpipe_assets.telemetry import (
    decode_packets,
    encode_packet,
    frame_packets,
    load_packet_set,
    tai_to_utc,
    utc_to_tai,
)
from punchpipe_assets.telemetry.packets import SEQ_FLAG_FIRST


@pytest.fixture
def packet_set():
    return load_packet_set()


def test_definitions_cover_images_filter_wheel_and_attitude(packet_set):
    assert {d.kind for d in packet_set.by_apid.values()} == {"image", "filter_wheel", "attitude"}
    assert packet_set.by_kind("image").fixed_length is None
    assert packet_set.by_kind("filter_wheel").fixed_length == 26


def test_times_round_trip_through_tai():
    when = datetime(2025, 8, 1, 12, 34, 56, 789000)
    seconds, microseconds = utc_to_tai(when)
    assert seconds > 800_000_000
    assert tai_to_utc(np.array([seconds]), np.array([microseconds])) == [when]


def test_encoded_packets_decode_with_ccsdspy(packet_set):
    image = packet_set.by_kind("image")
    seconds, microseconds = utc_to_tai(datetime(2025, 8, 1, 12))
    raw = encode_packet(
        image,
        {"SCI_XFI_HDR_SEC": seconds, "SCI_XFI_HDR_USEC": microseconds, "SCI_XFI_HDR_SCID": 0x2F},
        seq_count=16383,
        seq_flag=SEQ_FLAG_FIRST,
        payload=b"\xff\xd8abc",
    )
    framed = frame_packets(raw, packet_set)
    assert framed.damage_reason is None
    (packet,) = framed.packets
    assert (packet.seq_count, packet.seq_flag, packet.length) == (16383, SEQ_FLAG_FIRST, len(raw))
    decoded = decode_packets(image, [raw])
    assert decoded["SCI_XFI_HDR_SCID"][0] == 0x2F
    assert bytes(decoded["SCI_XFI_IMG_DATA"][0]) == b"\xff\xd8abc"
    assert decoded["timestamp"][0] == datetime(2025, 8, 1, 12)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x08\x20\xc0\x00", "truncated primary header (4 bytes) at byte 0"),
        (b"\x08\x41\xc0\x00\x00\x03abcd", "ENG_PFW packet of 4 bytes, expected 26 at byte 0"),
        (b"\xff" * 10, "not a CCSDS packet (version 7) at byte 0"),
    ],
)
def test_damage_is_described(packet_set, data, reason):
    framed = frame_packets(data, packet_set)
    assert framed.packets == [] and framed.damage_reason == reason and framed.damaged_bytes == len(data)
