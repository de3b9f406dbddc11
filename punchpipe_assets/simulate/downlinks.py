"""Simulated PUNCH downlinks: CCSDS telemetry files with images, filter-wheel and attitude packets.

The scene (a synthetic corona with drifting stars), the acquisition cadence and the packet contents
follow the mission closely enough to drive level 0 end to end; faults (lost packets, replays,
duplicates, damaged files) can be injected. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import groupby
from pathlib import Path

import numpy as np

from punchpipe_assets.cameras import CAMERAS, Camera
from punchpipe_assets.simulate.scene import Scene, attitude_and_orbit
from punchpipe_assets.telemetry.image import encode_image_payload
from punchpipe_assets.telemetry.packets import (
    SEQ_FLAG_CONTINUATION,
    SEQ_FLAG_FIRST,
    SEQ_FLAG_LAST,
    SEQ_FLAG_UNSEGMENTED,
    PacketDefinition,
    encode_packet,
    load_packet_set,
    utc_to_tai,
)

# Filter wheel order and primary resolver reference positions, as punchbowl's level 0 reads them.
PFW_ORDER = ("PP", "DK", "PZ", "PM", "CR")
PFW_REFERENCES = (1000, 4000, 7000, 10000, 13000)
COM_SET = (16 << 8) | (1 << 2) | (1 << 1)  # SCALE=16, SQRT=1, JPEG=1, CMP_BYP=0
EXPOSURE_TENTHS = {"WFI": 150, "NFI": 100}
GARBAGE_NAME = "PUNCH_TLM_9_garbage.tlm"


@dataclass
class SimulationReport:
    """What a simulation wrote.

    Attributes
    ----------
    files
        Telemetry files written, in order (regular downlinks, replays, garbage).
    images
        Every acquisition as (obs, acquisition time, filter code), by time.
    dropped_packets
        Image packets left out of the regular downlinks.
    duplicated_packets
        Image packets written twice in a row in the regular downlinks.
    replayed_duplicates
        Already downlinked image packets written again in a replay file.
    damaged
        Damaged files and what was done to them.

    """

    files: list[Path] = field(default_factory=list)
    images: list[tuple[str, datetime, str]] = field(default_factory=list)
    dropped_packets: int = 0
    duplicated_packets: int = 0
    replayed_duplicates: int = 0
    damaged: list[tuple[Path, str]] = field(default_factory=list)


def acquisition_schedule(camera: Camera, start: datetime, end: datetime) -> list[tuple[datetime, str]]:
    """Return the acquisitions of one camera in ``[start, end)``.

    Every 4 minutes from the hour a polarized triplet PM, PZ, PP at +0, +80, +160 s; on even
    4-minute cycles a clear image CR at +200 s; a dark DK at minute 59 of each hour. All times
    are shifted by ``3 * obs`` seconds.

    Parameters
    ----------
    camera
        The camera.
    start, end
        Naive UTC bounds.

    Returns
    -------
    list of (datetime, str)
        Acquisition times and filter codes, by time.

    """
    offset = timedelta(seconds=3 * int(camera.obs))
    hour = start.replace(minute=0, second=0, microsecond=0)
    times = []
    while hour < end:
        for cycle in range(15):
            t0 = hour + timedelta(minutes=4 * cycle) + offset
            steps = [(0, "PM"), (80, "PZ"), (160, "PP")] + ([(200, "CR")] if cycle % 2 == 0 else [])
            times += [(t0 + timedelta(seconds=dt), code) for dt, code in steps]
        times.append((hour + timedelta(minutes=59) + offset, "DK"))
        hour += timedelta(hours=1)
    return sorted((t, code) for t, code in times if start <= t < end)


def _time_fields(name: str, when: datetime, camera: Camera) -> dict[str, int]:
    seconds, microseconds = utc_to_tai(when)
    return {f"{name}_HDR_SEC": seconds, f"{name}_HDR_USEC": microseconds, f"{name}_HDR_SCID": camera.spacecraft_id}


def _write(path: Path, data: bytes) -> Path:
    part = path.with_name(f".{path.name}.part")
    part.write_bytes(data)
    os.replace(part, path)
    return path


def _split(payload: bytes, chunk: int) -> list[tuple[int, bytes]]:
    """Segments of an image payload with their CCSDS sequence flags."""
    pieces = [payload[i : i + chunk] for i in range(0, len(payload), chunk)]
    if len(pieces) == 1:
        return [(SEQ_FLAG_UNSEGMENTED, pieces[0])]
    flags = [SEQ_FLAG_FIRST] + [SEQ_FLAG_CONTINUATION] * (len(pieces) - 2) + [SEQ_FLAG_LAST]
    return list(zip(flags, pieces, strict=True))


def simulate(
    start: datetime,
    hours: float,
    out: Path,
    *,
    size: int = 2048,
    seed: int = 0,
    gap_fraction: float = 0.0,
    replay: bool = False,
    replay_duplicate_fraction: float = 0.0,
    duplicate_fraction: float = 0.0,
    damage: bool = False,
    downlink_minutes: float = 60.0,
    packet_payload_bytes: int = 8192,
    cameras: Sequence[Camera] = CAMERAS,
) -> SimulationReport:
    """Write simulated downlink files for the spacecraft.

    One file ``PUNCH_TLM_{obs}_{YYYYmmddHHMMSS}.tlm`` per spacecraft and downlink window (named
    by the window start) holds the window's filter-wheel (2 s before each image), attitude
    (every minute from ``start`` - 5 min to ``end`` + 5 min) and image packets in time order.
    Files are written atomically (``.{name}.part``, then renamed); the spacecraft are simulated
    in parallel threads.

    Parameters
    ----------
    start
        Naive UTC start; acquisitions are taken in ``[start, start + hours)``.
    hours
        Duration.
    out
        Output folder, created if needed.
    size
        Image side in pixels.
    seed
        Seed of the scene, noise and faults.
    gap_fraction
        Fraction of image packets left out of the regular downlinks (never a whole image).
    replay
        Also write one ``PUNCH_TLM_{obs}_{end}_replay.tlm`` per spacecraft with the dropped
        packets and the replayed duplicates (not written when it would be empty).
    replay_duplicate_fraction
        Fraction of the downlinked image packets repeated in the replay file.
    duplicate_fraction
        Fraction of image packets written twice in a row in the regular downlinks.
    damage
        Cut the last regular file of observatory 1 (or the first camera) inside its last
        packet and write ``PUNCH_TLM_9_garbage.tlm`` (4096 random bytes, not CCSDS).
    downlink_minutes
        Length of a downlink window.
    packet_payload_bytes
        Image bytes per image packet.
    cameras
        The cameras to simulate.

    Returns
    -------
    SimulationReport
        Files, acquisitions and injected faults.

    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    end = start + timedelta(hours=hours)
    window = timedelta(minutes=downlink_minutes)
    n_windows = max(1, math.ceil((end - start) / window - 1e-9))
    packets = load_packet_set()
    image_def, pfw_def, xact_def = (packets.by_kind(k) for k in ("image", "filter_wheel", "attitude"))
    damaged_obs = "1" if any(c.obs == "1" for c in cameras) else cameras[0].obs
    utc_to_tai(start)  # load leap seconds before the threads start

    def run(camera: Camera) -> tuple[SimulationReport, bytes]:
        """Write the regular downlinks of one spacecraft; return its report and replay bytes."""
        report = SimulationReport()
        scene = Scene(camera, size, seed)
        faults = np.random.default_rng([seed, int(camera.obs), 1])
        resolver = np.random.default_rng([seed, int(camera.obs), 3])
        counts: dict[int, int] = {d.apid: 0 for d in (image_def, pfw_def, xact_def)}
        group = block = 0

        def packet(definition: PacketDefinition, values: dict[str, int], **kwargs: object) -> bytes:
            seq = counts[definition.apid]
            counts[definition.apid] = (seq + 1) % 16384
            return encode_packet(definition, values, seq_count=seq, **kwargs)  # type: ignore[arg-type]

        schedule = acquisition_schedule(camera, start, end)
        report.images += [(camera.obs, t, code) for t, code in schedule]
        minutes = int((end - start).total_seconds() // 60) + 11
        xact_times = [start + timedelta(minutes=k - 5) for k in range(minutes)]
        quaternions, positions, velocities = attitude_and_orbit(camera, xact_times)
        events = sorted(
            [(t, 0, k, "") for k, t in enumerate(xact_times)]
            + [(t - timedelta(seconds=2), 1, 0, code) for t, code in schedule]
            + [(t, 2, 0, code) for t, code in schedule]
        )

        def window_of(event: tuple) -> int:
            return min(max(int((event[0] - start) / window), 0), n_windows - 1)

        replayed: list[bytes] = []
        for index, window_events in groupby(events, key=window_of):
            regular: list[bytes] = []
            for when, kind, k, code in window_events:
                if kind == 0:
                    values = _time_fields(xact_def.name, when, camera)
                    for axis in range(3):
                        values[f"GPS_POSITION_ECEF{axis + 1}"] = round(positions[k, axis] / 2e-5)
                        values[f"GPS_VELOCITY_ECEF{axis + 1}"] = round(velocities[k, axis] / 5e-9)
                    for axis in range(4):
                        values[f"ATT_DET_Q_BODY_WRT_ECI{axis + 1}"] = round(quaternions[k, axis] / 0.5e-10)
                    regular.append(packet(xact_def, values))
                elif kind == 1:
                    position = PFW_ORDER.index(code)
                    values = _time_fields(pfw_def.name, when, camera) | {
                        "PFW_STATUS": 1,
                        "POSITION_CURR": position,
                        "POSITION_CMD": position,
                        "RESOLVER_POS_RAW": PFW_REFERENCES[position] + int(resolver.integers(-49, 50)),
                        "RESOLVER_POS_CORR": PFW_REFERENCES[position] + int(resolver.integers(-49, 50)),
                    }
                    values |= {f"PRIMARY_RESOLVER_POSITION_{i + 1}": ref for i, ref in enumerate(PFW_REFERENCES)}
                    regular.append(packet(pfw_def, values))
                else:
                    noise = np.random.default_rng([seed, int(camera.obs), 2, *utc_to_tai(when)])
                    payload = encode_image_payload(scene.frame(when, code, noise))
                    header = _time_fields(image_def.name, when, camera) | {
                        "SCI_XFI_HDR_COM_SET": COM_SET,
                        "SCI_XFI_HDR_ACQ_SET": EXPOSURE_TENTHS[camera.instrument] << 8,
                    }
                    segments = _split(payload, packet_payload_bytes)
                    n = len(segments)
                    dropped = faults.random(n) < gap_fraction
                    if dropped.all():
                        dropped[faults.integers(n)] = False
                    doubled = (faults.random(n) < duplicate_fraction) & ~dropped
                    repeated = (faults.random(n) < replay_duplicate_fraction) & ~dropped & replay
                    for i, (flag, chunk) in enumerate(segments):
                        values = header | {"SCI_XFI_HDR_IMG_PKT_GRP": group, "SCI_XFI_HDR_FLASH_BLOCK": block}
                        group, block = (group + 1) % 256, (block + 1) % 65536
                        raw = packet(image_def, values, seq_flag=flag, payload=chunk)
                        if dropped[i]:
                            replayed.append(raw)
                            continue
                        regular += [raw, raw] if doubled[i] else [raw]
                        if repeated[i]:
                            replayed.append(raw)
                    report.dropped_packets += int(dropped.sum())
                    report.duplicated_packets += int(doubled.sum())
                    report.replayed_duplicates += int(repeated.sum())
            path = out / f"PUNCH_TLM_{camera.obs}_{start + index * window:%Y%m%d%H%M%S}.tlm"
            data = b"".join(regular)
            if damage and camera.obs == damaged_obs and index == n_windows - 1:
                last, keep = len(regular[-1]), min(100, len(regular[-1]) // 2)
                data = data[: len(data) - last + keep]
                report.damaged.append((path, f"truncated to {len(data)} bytes, last packet cut to {keep} of {last}"))
            report.files.append(_write(path, data))
        return report, b"".join(replayed)

    report = SimulationReport()
    with ThreadPoolExecutor(max_workers=min(len(cameras), os.cpu_count() or 1)) as pool:
        results = list(pool.map(run, cameras))
    replays = []
    for camera, (part, replayed) in zip(cameras, results, strict=True):
        report.files += part.files
        report.images += part.images
        report.damaged += part.damaged
        report.dropped_packets += part.dropped_packets
        report.duplicated_packets += part.duplicated_packets
        report.replayed_duplicates += part.replayed_duplicates
        if replay and replayed:
            replays.append((out / f"PUNCH_TLM_{camera.obs}_{end:%Y%m%d%H%M%S}_replay.tlm", replayed))
    report.files += [_write(path, data) for path, data in replays]
    if damage:
        garbage = b"\xff" + np.random.default_rng([seed, 9]).bytes(4095)
        path = _write(out / GARBAGE_NAME, garbage)
        report.files.append(path)
        report.damaged.append((path, "garbage: 4096 random bytes starting with 0xFF (not a CCSDS packet)"))
    report.images.sort(key=lambda image: (image[1], image[0]))
    return report
