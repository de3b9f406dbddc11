"""Telemetry: the packet set, image payloads, and reading downlink files."""

from punchpipe_assets.telemetry.image import ImageDecodeError, decode_image_payload, encode_image_payload
from punchpipe_assets.telemetry.packets import (
    FramedFile,
    FramedPacket,
    PacketDefinition,
    PacketSet,
    TelemetryError,
    decode_packets,
    encode_packet,
    frame_packets,
    load_packet_set,
    tai_to_utc,
    utc_to_tai,
)

__all__ = [
    "FramedFile",
    "FramedPacket",
    "ImageDecodeError",
    "PacketDefinition",
    "PacketSet",
    "TelemetryError",
    "decode_image_payload",
    "decode_packets",
    "encode_image_payload",
    "encode_packet",
    "frame_packets",
    "load_packet_set",
    "tai_to_utc",
    "utc_to_tai",
]
