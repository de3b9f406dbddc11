"""Image payloads against punchbowl's decoder and the real flight sample in its wheel."""

from pathlib import Path

import numpy as np
import punchbowl
import pytest

from punchpipe_assets.telemetry import ImageDecodeError, decode_image_payload, encode_image_payload

FLIGHT_DATA = Path(punchbowl.__file__).parent / "auto" / "flows" / "tests" / "data"


def test_flight_sample_decodes_exactly_as_punchbowl_does():
    from punchbowl.auto.flows.level0 import decode_image_packets

    payload = (FLIGHT_DATA / "packet_sample.bin").read_bytes()
    expected = decode_image_packets(np.frombuffer(payload, dtype=np.uint8), {"JPEG": 1, "CMP_BYP": 0})
    image = decode_image_payload(payload)
    assert image.shape == (2048, 2048) and image.dtype == expected.dtype
    np.testing.assert_array_equal(image, expected)


def test_faulty_flight_sample_raises_a_clear_error():
    with pytest.raises(ImageDecodeError, match="damaged JPEG-LS stream"):
        decode_image_payload((FLIGHT_DATA / "faulty_packet_sample.bin").read_bytes())


@pytest.mark.parametrize(
    ("cut", "message"),
    [(slice(2, None), "no JPEG start-of-image marker"), (slice(None, -2), "no JPEG end-of-image marker")],
)
def test_missing_markers_are_named(cut, message):
    payload = (FLIGHT_DATA / "packet_sample.bin").read_bytes()
    with pytest.raises(ImageDecodeError, match=message):
        decode_image_payload(payload[cut])


def test_lost_middle_packet_is_reported():
    payload = (FLIGHT_DATA / "packet_sample.bin").read_bytes()
    with pytest.raises(ImageDecodeError):
        decode_image_payload(payload[:400_000] + payload[408_192:])


@pytest.mark.parametrize("size", [64, 2048])
def test_encoding_round_trips(size):
    image = np.random.default_rng(size).integers(0, 1024, (size, size)).astype(np.uint16)
    np.testing.assert_array_equal(decode_image_payload(encode_image_payload(image)), image)
