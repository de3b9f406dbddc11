"""The CCSDS packet set: definitions, framing, parsing and encoding.

PUNCH's flight packet definitions are not public. The set in ``definitions/`` is modeled on
them (field names follow the flight ``SCI_XFI``, ``ENG_PFW`` and ``ENG_XACT`` packets) and is read
with ccsdspy, so flight definitions can be dropped into another folder with the same layout:
``apids.csv`` (``name, apid, kind, description``) and one ``{name}.csv`` per packet in
ccsdspy's CSV format. Each packet's secondary header starts with ``{name}_HDR_SEC``,
``{name}_HDR_USEC`` (TAI seconds and microseconds since 2000-01-01) and ``{name}_HDR_SCID``.

Image packets carry one segment of an image; the CCSDS sequence flags mark the first (1),
continuation (0) and last (2) segments, and all segments of an image share its acquisition time.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import ccsdspy
import numpy as np
from astropy.time import Time, TimeDelta

DEFAULT_DEFINITIONS = Path(__file__).parent / "definitions"
PRIMARY_HEADER_BYTES = 6
# TAI epoch of the spacecraft clock, as punchbowl's control segment defines it.
SC_TIME_EPOCH = Time(2000.0, format="decimalyear", scale="tai")

SEQ_FLAG_CONTINUATION, SEQ_FLAG_FIRST, SEQ_FLAG_LAST, SEQ_FLAG_UNSEGMENTED = 0, 1, 2, 3


class TelemetryError(ValueError):
    """A telemetry file or packet that cannot be read."""


@dataclass(frozen=True)
class PacketDefinition:
    """One packet type of the set."""

    name: str
    apid: int
    kind: str
    fields: tuple[tuple[str, str, int], ...]  # (name, data_type, bit_length)

    @property
    def fixed_length(self) -> int | None:
        """Length in bytes after the primary header, or None for an expanding packet."""
        if any("expand" in data_type for _, data_type, _ in self.fields):
            return None
        return sum(bits for _, _, bits in self.fields) // 8

    @property
    def header_bytes(self) -> int:
        """Bytes after the primary header before an expanding payload."""
        return sum(bits for _, data_type, bits in self.fields if "expand" not in data_type) // 8

    @property
    def ccsdspy_packet(self) -> ccsdspy.FixedLength | ccsdspy.VariableLength:
        """The ccsdspy decoder of this packet."""
        return _ccsdspy_packet(self)


@lru_cache(maxsize=16)
def _ccsdspy_packet(definition: PacketDefinition):
    path = definition.csv_path  # type: ignore[attr-defined]
    cls = ccsdspy.FixedLength if definition.fixed_length is not None else ccsdspy.VariableLength
    return cls.from_file(str(path))


@dataclass(frozen=True)
class PacketSet:
    """All packet definitions of one folder, by APID."""

    folder: Path
    by_apid: dict[int, PacketDefinition]

    def by_kind(self, kind: str) -> PacketDefinition:
        """Return the definition of the packet of one kind (``image``, ``filter_wheel``, ``attitude``)."""
        for definition in self.by_apid.values():
            if definition.kind == kind:
                return definition
        raise KeyError(kind)


@lru_cache(maxsize=4)
def load_packet_set(folder: str | Path | None = None) -> PacketSet:
    """Read the packet definitions of a folder.

    Parameters
    ----------
    folder
        Folder with ``apids.csv`` and one CSV per packet; default: the simulated set.

    Returns
    -------
    PacketSet
        The definitions by APID.

    """
    folder = Path(folder or DEFAULT_DEFINITIONS)
    by_apid = {}
    with open(folder / "apids.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            csv_path = folder / f"{row['name']}.csv"
            with open(csv_path, newline="") as packet_handle:
                fields = tuple((r["name"], r["data_type"], int(r["bit_length"])) for r in csv.DictReader(packet_handle))
            definition = PacketDefinition(row["name"], int(row["apid"], 0), row["kind"], fields)
            object.__setattr__(definition, "csv_path", csv_path)
            by_apid[definition.apid] = definition
    return PacketSet(folder, by_apid)


@dataclass
class FramedPacket:
    """One complete packet found in a file."""

    index: int
    offset: int
    length: int
    apid: int
    seq_flag: int
    seq_count: int
    digest: str


@dataclass
class FramedFile:
    """The packets of one telemetry file and what could not be read."""

    packets: list[FramedPacket] = field(default_factory=list)
    damaged_offset: int | None = None
    damaged_bytes: int = 0
    damage_reason: str | None = None


def frame_packets(data: bytes, packet_set: PacketSet) -> FramedFile:
    """Split a downlink into complete packets, stopping at the first damaged one.

    Parameters
    ----------
    data
        The bytes of a telemetry file.
    packet_set
        The definitions; a packet with an unknown APID or a length that does not fit its
        definition ends the readable part of the file.

    Returns
    -------
    FramedFile
        The complete packets and, if the file is damaged, where and why.

    """
    framed = FramedFile()
    offset, size = 0, len(data)
    while offset < size:
        reason = None
        if size - offset < PRIMARY_HEADER_BYTES:
            reason = f"truncated primary header ({size - offset} bytes)"
        else:
            b0, b1, b2, b3, b4, b5 = data[offset : offset + PRIMARY_HEADER_BYTES]
            version, apid = b0 >> 5, ((b0 & 0x07) << 8) | b1
            total = PRIMARY_HEADER_BYTES + ((b4 << 8) | b5) + 1
            definition = packet_set.by_apid.get(apid)
            if version != 0:
                reason = f"not a CCSDS packet (version {version})"
            elif definition is None:
                reason = f"unknown APID 0x{apid:03x}"
            elif offset + total > size:
                reason = f"truncated packet (APID 0x{apid:03x}, {size - offset} of {total} bytes)"
            elif definition.fixed_length is not None and total - 6 != definition.fixed_length:
                reason = f"{definition.name} packet of {total - 6} bytes, expected {definition.fixed_length}"
            elif definition.fixed_length is None and total - 6 <= definition.header_bytes:
                reason = f"{definition.name} packet of {total - 6} bytes has no payload"
        if reason is not None:
            framed.damaged_offset = offset
            framed.damaged_bytes = size - offset
            framed.damage_reason = f"{reason} at byte {offset}"
            break
        raw = data[offset : offset + total]
        framed.packets.append(
            FramedPacket(
                index=len(framed.packets),
                offset=offset,
                length=total,
                apid=apid,
                seq_flag=b2 >> 6,
                seq_count=((b2 & 0x3F) << 8) | b3,
                digest=hashlib.sha1(raw, usedforsecurity=False).hexdigest(),
            )
        )
        offset += total
    return framed


def tai_to_utc(seconds: np.ndarray, microseconds: np.ndarray) -> list[datetime]:
    """Convert spacecraft TAI seconds and microseconds since 2000 to naive UTC datetimes."""
    offsets = np.asarray(seconds, dtype=np.float64) + np.asarray(microseconds, dtype=np.float64) / 1e6
    if offsets.size == 0:
        return []
    times = SC_TIME_EPOCH + TimeDelta(offsets, format="sec", scale="tai")
    return list(times.utc.datetime)


def utc_to_tai(when: datetime) -> tuple[int, int]:
    """Convert a naive UTC datetime to spacecraft TAI seconds and microseconds since 2000."""
    delta = (Time(when, scale="utc").tai - SC_TIME_EPOCH).to_value("sec")
    seconds = int(np.floor(delta))
    microseconds = int(round((delta - seconds) * 1e6))
    if microseconds == 1_000_000:
        seconds, microseconds = seconds + 1, 0
    return seconds, microseconds


def decode_packets(definition: PacketDefinition, raw_packets: list[bytes]) -> dict[str, np.ndarray]:
    """Decode packets of one type with ccsdspy.

    Parameters
    ----------
    definition
        Their definition.
    raw_packets
        Complete packets, primary header included.

    Returns
    -------
    dict
        Field name to array (payloads as arrays of uint8 arrays), plus ``timestamp`` (UTC).

    """
    if not raw_packets:
        return {}
    decoded = definition.ccsdspy_packet.load(io.BytesIO(b"".join(raw_packets)), include_primary_header=True)
    if len(decoded[f"{definition.name}_HDR_SEC"]) != len(raw_packets):
        raise TelemetryError(f"ccsdspy decoded {len(decoded)} of {len(raw_packets)} {definition.name} packets")
    decoded["timestamp"] = np.array(
        tai_to_utc(decoded[f"{definition.name}_HDR_SEC"], decoded[f"{definition.name}_HDR_USEC"]), dtype=object
    )
    return decoded


def encode_packet(
    definition: PacketDefinition,
    values: dict[str, int],
    *,
    seq_count: int,
    seq_flag: int = SEQ_FLAG_UNSEGMENTED,
    payload: bytes = b"",
) -> bytes:
    """Encode one packet (used by the simulator).

    Parameters
    ----------
    definition
        The packet type; its non-payload fields must be whole bytes.
    values
        Field values by name; missing fields are zero.
    seq_count, seq_flag
        CCSDS primary-header sequence count (mod 16384) and flags.
    payload
        Bytes of the expanding field, if any.

    Returns
    -------
    bytes
        The packet, primary header included.

    """
    body = bytearray()
    for name, data_type, bits in definition.fields:
        if "expand" in data_type:
            body += payload
            continue
        value = int(values.get(name, 0))
        body += value.to_bytes(bits // 8, "big", signed=data_type.startswith("int"))
    length = len(body) - 1
    header = bytes(
        [
            ((definition.apid >> 8) & 0x07) | 0x08,  # version 0, type telemetry, secondary header
            definition.apid & 0xFF,
            (seq_flag << 6) | ((seq_count >> 8) & 0x3F),
            seq_count & 0xFF,
            (length >> 8) & 0xFF,
            length & 0xFF,
        ]
    )
    return header + bytes(body)
