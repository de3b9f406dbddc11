"""Level 0 image formation: packets from the catalog to ``PUNCH_L0_...`` FITS files.

The science (settings unpacking, filter-wheel product code, spacecraft position keywords,
preliminary WCS, metadata templates) is punchbowl's; this module gathers packets, decides what is
complete or unchanged, and records lineage.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from punchpipe_assets.cameras import Camera
from punchpipe_assets.config import Level0Settings
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import FilePacket, Packet, ProductFile, utcnow
from punchpipe_assets.telemetry.image import ImageDecodeError, decode_image_payload
from punchpipe_assets.telemetry.ingest import not_duplicate
from punchpipe_assets.telemetry.packets import (
    SEQ_FLAG_FIRST,
    SEQ_FLAG_LAST,
    SEQ_FLAG_UNSEGMENTED,
    PacketSet,
    decode_packets,
)

# Bumped whenever the way a Level 0 file is formed changes; part of every file's fingerprint.
LEVEL0_CODE_VERSION = "level0-v1"
# Exposure starts this long after the packet timestamp (CCD clearing), as in punchbowl's control segment.
CLEARING_OFFSET = timedelta(seconds=3.8)
# Products are formed at the flight frame shape; reduced-size simulated frames stand in for it.
SCIENCE_SHAPE = (2048, 2048)
SEQ_MODULUS = 16384


@dataclass
class ImageOutcome:
    """What happened to one image (one acquisition of one camera)."""

    acquisition_time: datetime
    status: str  # made | unchanged | waiting | skipped
    reason: str | None = None
    path: str | None = None
    sha256: str | None = None
    file_type: str | None = None
    telemetry_files: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


@dataclass
class PartitionOutcome:
    """What happened to every image of one camera in one time window."""

    camera: Camera
    start: datetime
    end: datetime
    images: list[ImageOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        """Number of images with a status."""
        return sum(image.status == status for image in self.images)

    @property
    def fingerprint(self) -> str:
        """A digest of the window's products: the partition's data version."""
        digest = hashlib.sha256()
        for image in sorted(self.images, key=lambda image: image.acquisition_time):
            digest.update(f"{image.acquisition_time.isoformat()}|{image.status}|{image.sha256}\n".encode())
        return digest.hexdigest()[:24]


@dataclass
class _Formation:
    """An image ready to be written: packets chosen, payload decoded, engineering packets found."""

    camera: Camera
    outcome: ImageOutcome
    ordered: list[Packet]
    engineering: list[Packet]
    existing: ProductFile | None
    fingerprint: str
    decoded: dict
    image: np.ndarray
    pfw: Packet
    xact_before: Packet
    xact_after: Packet
    missing: int
    partition_key: str | None


class PacketReader:
    """Reads packet bytes back from telemetry files, keeping each file open once."""

    def __init__(self) -> None:
        self._handles: dict[str, object] = {}

    def read(self, path: str, offset: int, length: int) -> bytes:
        """The bytes of one packet."""
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = open(path, "rb")  # noqa: SIM115 - closed in close()
        handle.seek(offset)
        return handle.read(length)

    def close(self) -> None:
        """Close every file."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def _order_image_packets(packets: list[Packet]) -> tuple[list[Packet], list[Packet], int]:
    """Order an image's packets, keep the newest copy of each segment, count missing segments.

    Returns
    -------
    tuple
        (ordered packets, superseded packets, number of missing segments)
    """
    by_count: dict[int, list[Packet]] = defaultdict(list)
    for packet in packets:
        by_count[packet.seq_count].append(packet)
    chosen = {count: max(group, key=lambda p: p.id) for count, group in by_count.items()}
    superseded = [p for count, group in by_count.items() for p in group if p is not chosen[count]]
    if len(chosen) == 1 and next(iter(chosen.values())).seq_flag == SEQ_FLAG_UNSEGMENTED:
        return list(chosen.values()), superseded, 0
    firsts = [p for p in chosen.values() if p.seq_flag == SEQ_FLAG_FIRST]
    lasts = [p for p in chosen.values() if p.seq_flag == SEQ_FLAG_LAST]
    origin = firsts[0].seq_count if firsts else min(chosen)
    ordered = sorted(chosen.values(), key=lambda p: (p.seq_count - origin) % SEQ_MODULUS)
    if firsts and lasts:
        expected = (lasts[0].seq_count - origin) % SEQ_MODULUS + 1
        missing = max(expected - len(ordered), 0)
    else:
        missing = max(1, len(ordered) // 8)  # unknown length: report at least the lost end segments
        missing += 0 if firsts else 1
    return ordered, superseded, missing


def _nearest(
    session: Session, kind: str, spacecraft_id: int, when: datetime, window: timedelta, before: bool
) -> Packet | None:
    """The engineering packet of a kind nearest before (or after) a time within a window."""
    query = select(Packet).where(Packet.kind == kind, Packet.spacecraft_id == spacecraft_id, not_duplicate())
    if before:
        query = query.where(Packet.timestamp <= when, Packet.timestamp >= when - window).order_by(
            Packet.timestamp.desc()
        )
    else:
        query = query.where(Packet.timestamp >= when, Packet.timestamp <= when + window).order_by(
            Packet.timestamp.asc()
        )
    return session.scalars(query.order_by(Packet.id.desc()).limit(1)).first()


class Level0Former:
    """Forms the Level 0 images of one camera, window by window.

    Parameters
    ----------
    session
        Catalog session (the caller commits).
    archive
        Where files are written.
    settings
        Level 0 settings.
    packet_set
        Packet definitions.
    now
        The time against which replay waits are measured (naive UTC).
    run_id
        The Dagster run, recorded with each product.
    """

    def __init__(
        self,
        session: Session,
        archive: ArchiveResource,
        settings: Level0Settings,
        packet_set: PacketSet,
        now: datetime | None = None,
        run_id: str | None = None,
    ) -> None:
        self.session, self.archive, self.settings, self.packet_set = session, archive, settings, packet_set
        self.now = now or utcnow()
        self.run_id = run_id
        self.reader = PacketReader()
        self._engineering: dict[int, dict] = {}

    def _decode_engineering(self, packet: Packet) -> dict:
        """The fields of one engineering packet; decoded once, as many images share it."""
        if packet.id not in self._engineering:
            definition = self.packet_set.by_apid[packet.apid]
            raw = self.reader.read(packet.telemetry_file.path, packet.byte_offset, packet.length)
            self._engineering[packet.id] = {k: v[0] for k, v in decode_packets(definition, [raw]).items()}
        return self._engineering[packet.id]

    def form_window(
        self, camera: Camera, start: datetime, end: datetime, partition_key: str | None = None
    ) -> PartitionOutcome:
        """Form every image of a camera acquired in ``[start, end)``."""
        outcome = PartitionOutcome(camera, start, end)
        # Packets registered while this window is formed are left for the next request.
        high_water = self.session.scalar(select(func.max(Packet.id))) or 0
        packets = self.session.scalars(
            select(Packet)
            .where(
                Packet.id <= high_water,
                Packet.kind == "image",
                Packet.spacecraft_id == camera.spacecraft_id,
                Packet.timestamp >= start,
                Packet.timestamp < end,
                not_duplicate(),
            )
            .order_by(Packet.timestamp, Packet.id)
        ).all()
        by_time: dict[datetime, list[Packet]] = defaultdict(list)
        for packet in packets:
            by_time[packet.timestamp].append(packet)
        try:
            prepared = [self.form_image(camera, when, group, partition_key) for when, group in by_time.items()]
            formations = [item for item in prepared if isinstance(item, _Formation)]
            outcome.images = [item for item in prepared if isinstance(item, ImageOutcome)]
            for formation, keywords in zip(formations, self._position_keywords(formations), strict=True):
                outcome.images.append(self._write(formation, keywords))
            outcome.images.sort(key=lambda image: image.acquisition_time)
        finally:
            self.reader.close()
        in_window = (
            Packet.spacecraft_id == camera.spacecraft_id,
            Packet.timestamp >= start,
            Packet.timestamp < end,
            Packet.id <= high_water,
        )
        # Engineering packets no image of the window needed are accounted for (a later image may still use them).
        self.session.execute(
            update(Packet)
            .where(*in_window, Packet.kind != "image", Packet.state == "pending")
            .values(state="skipped", reason="not the nearest engineering packet of any image so far")
        )
        # Every packet of the window has now been looked at: the sensor stops requesting it.
        self.session.execute(
            update(Packet).where(*in_window, Packet.last_attempt.is_(None)).values(last_attempt=self.now)
        )
        return outcome

    def form_image(
        self, camera: Camera, acquisition_time: datetime, packets: list[Packet], partition_key: str | None = None
    ) -> "ImageOutcome | _Formation":
        """Prepare one image from its packets, or record why it is not formed (or unchanged)."""
        ordered, superseded, missing = _order_image_packets(packets)
        for packet in superseded:
            packet.state, packet.reason = "skipped", "superseded by a newer copy of the same segment"
        telemetry_names = sorted({p.telemetry_file.name for p in ordered})
        outcome = ImageOutcome(acquisition_time, "waiting", telemetry_files=telemetry_names)
        first_received = min(p.telemetry_file.registered_at for p in ordered)
        deadline = first_received + timedelta(hours=self.settings.replay_wait_hours)
        may_wait = self.now < deadline

        observation_time = acquisition_time + CLEARING_OFFSET
        pfw = _nearest(
            self.session,
            "filter_wheel",
            camera.spacecraft_id,
            observation_time,
            timedelta(seconds=self.settings.pfw_window_seconds),
            before=True,
        )
        attitude_window = timedelta(seconds=self.settings.attitude_window_seconds)
        xact_before = _nearest(self.session, "attitude", camera.spacecraft_id, observation_time, attitude_window, True)
        xact_after = _nearest(self.session, "attitude", camera.spacecraft_id, observation_time, attitude_window, False)
        problem = None
        if missing:
            problem = f"{missing} image packet(s) missing"
        elif pfw is None:
            problem = f"no filter-wheel packet within {self.settings.pfw_window_seconds:.0f} s before the image"
        elif xact_before is None and xact_after is None:
            problem = "no attitude packet near the image"
        if problem and may_wait:
            return self._mark(
                outcome, ordered, "waiting", f"waiting for replay until {deadline:%Y-%m-%dT%H:%M}: {problem}"
            )
        if pfw is None or (xact_before is None and xact_after is None):
            return self._mark(outcome, ordered, "skipped", f"not formed: {problem} after the replay wait")

        engineering = [p for p in (pfw, xact_before, xact_after) if p is not None]
        fingerprint = hashlib.sha256(
            json.dumps(
                [
                    LEVEL0_CODE_VERSION,
                    self.settings.file_version,
                    self.settings.plate_scale_deg.get(camera.obs),
                    [p.digest for p in ordered],
                    [p.digest for p in engineering],
                ]
            ).encode()
        ).hexdigest()
        existing = self.session.scalars(
            select(ProductFile).where(
                ProductFile.level == "0",
                ProductFile.observatory == camera.obs,
                ProductFile.acquisition_time == acquisition_time,
            )
        ).first()
        if existing is not None and existing.fingerprint == fingerprint and Path(existing.path).exists():
            outcome.status, outcome.path, outcome.sha256 = "unchanged", existing.path, existing.sha256
            outcome.file_type = existing.file_type
            return outcome

        try:
            definition = self.packet_set.by_kind("image")
            raws = [self.reader.read(p.telemetry_file.path, p.byte_offset, p.length) for p in ordered]
            decoded = decode_packets(definition, raws)
            payload = b"".join(bytes(chunk) for chunk in decoded[f"{definition.name}_IMG_DATA"])
            image = decode_image_payload(payload)
        except ImageDecodeError as error:
            status = "waiting" if may_wait else "skipped"
            return self._mark(
                outcome, ordered, status, f"image not decodable ({problem or 'all packets present'}): {error}"
            )

        return _Formation(
            camera=camera,
            outcome=outcome,
            ordered=ordered,
            engineering=engineering,
            existing=existing,
            fingerprint=fingerprint,
            decoded=decoded,
            image=image,
            pfw=pfw,
            xact_before=xact_before or xact_after,
            xact_after=xact_after or xact_before,
            missing=missing,
            partition_key=partition_key,
        )

    def _position_keywords(self, formations: list["_Formation"]) -> list[dict]:
        """Spacecraft position keywords of many images in one vectorized call of punchbowl's helper."""
        from punchbowl.auto.flows.level0 import organize_spacecraft_position_keywords, unpack_acquisition_settings

        if not formations:
            return []
        prefix = self.packet_set.by_kind("image").name
        midpoints, nearest_packets, nearest_values = [], [], []
        for formation in formations:
            acquisition = unpack_acquisition_settings(int(formation.decoded[f"{prefix}_HDR_ACQ_SET"][0]))
            exposure = acquisition["EXPOSURE"] / 10.0 * (1 + acquisition["IMG_NUM"])
            midpoint = formation.outcome.acquisition_time + CLEARING_OFFSET + timedelta(seconds=exposure / 2)
            packet = min(
                (formation.xact_before, formation.xact_after),
                key=lambda candidate: abs((candidate.timestamp - midpoint).total_seconds()),
            )
            midpoints.append(midpoint)
            nearest_packets.append(packet)
            nearest_values.append(self._decode_engineering(packet))
        columns = {key: np.array([values[key] for values in nearest_values]) for key in nearest_values[0]}
        vectors = organize_spacecraft_position_keywords(midpoints, nearest_packets[0], columns)
        return [
            {
                key: (packet.timestamp.isoformat() if key == "XACTTIME" else np.asarray(value)[i].item())
                for key, value in vectors.items()
            }
            for i, packet in enumerate(nearest_packets)
        ]

    def _write(self, formation: "_Formation", position_keywords: dict) -> ImageOutcome:
        """Build the cube of a prepared image, write it atomically and record its lineage."""
        camera, outcome, existing = formation.camera, formation.outcome, formation.existing
        ordered, engineering, missing = formation.ordered, formation.engineering, formation.missing
        cube, flags = self._build_cube(formation, position_keywords)
        file_type = cube.meta["TYPECODE"].value
        path = self.archive.product_path(
            "0", file_type, camera.obs, _parse_fits_time(cube.meta["DATE-OBS"].value), self.settings.file_version
        )
        sha256 = self.archive.write_cube(cube, path)
        product = existing or ProductFile(level="0", observatory=camera.obs, acquisition_time=outcome.acquisition_time)
        if existing is not None and existing.path != str(path):
            Path(existing.path).unlink(missing_ok=True)
        product.file_type, product.file_version = file_type, self.settings.file_version
        product.date_obs = _parse_fits_time(cube.meta["DATE-OBS"].value)
        product.path, product.sha256, product.fingerprint = str(path), sha256, formation.fingerprint
        product.outlier, product.bad_packets = bool(cube.meta["OUTLIER"].value), bool(missing)
        product.flags = ", ".join(flags) or None
        product.mean = float(cube.meta["DATAAVG"].value)
        product.dagster_run_id, product.date_created = self.run_id, utcnow()
        product.partition_key = formation.partition_key
        product.state = "created"
        self.session.add(product)
        self.session.flush()
        self.session.execute(delete(FilePacket).where(FilePacket.file_id == product.id))
        self.session.add_all(
            [FilePacket(file_id=product.id, packet_id=p.id, role="image") for p in ordered]
            + [
                FilePacket(file_id=product.id, packet_id=p.id, role=p.kind)
                for p in {p.id: p for p in engineering}.values()
            ]
        )
        for packet in ordered:
            packet.state, packet.reason, packet.last_attempt = "used", None, self.now
        for packet in engineering:
            packet.state, packet.reason = "used", None
        outcome.status, outcome.path, outcome.sha256, outcome.file_type = "made", str(path), sha256, file_type
        outcome.flags = flags
        return outcome

    def _mark(self, outcome: ImageOutcome, packets: list[Packet], status: str, reason: str) -> ImageOutcome:
        for packet in packets:
            packet.state = "pending" if status == "waiting" else "skipped"
            packet.reason, packet.last_attempt = reason, self.now
        outcome.status, outcome.reason = status, reason
        return outcome

    def _build_cube(self, formation: "_Formation", position_keywords: dict):
        """Fill Level 0 metadata through punchbowl's template and helpers."""
        camera, decoded, image, missing = formation.camera, formation.decoded, formation.image, formation.missing
        pfw, xact_before, xact_after = formation.pfw, formation.xact_before, formation.xact_after
        telemetry_names = formation.outcome.telemetry_files
        import punchbowl
        import quaternion  # noqa: F401 - registers np.quaternion, used by punchbowl's helpers
        from astropy import units as u
        from punchbowl.auto.flows.level0 import (
            determine_file_type,
            form_preliminary_wcs,
            organize_compression_and_acquisition_settings,
            organize_gain_info,
            unpack_acquisition_settings,
            unpack_compression_settings,
        )
        from punchbowl.data.punch_io import _update_statistics
        from punchbowl.data.punchcube import PUNCHCube
        from punchbowl.data.wcs import extract_crota_from_wcs

        definition = self.packet_set.by_kind("image")
        prefix = definition.name
        compression = unpack_compression_settings(int(decoded[f"{prefix}_HDR_COM_SET"][0]))
        acquisition = unpack_acquisition_settings(int(decoded[f"{prefix}_HDR_ACQ_SET"][0]))
        pfw_values = self._decode_engineering(pfw)
        before = self._decode_engineering(xact_before)
        after = self._decode_engineering(xact_after)

        acquisition_time = decoded["timestamp"][0]
        observation_time = acquisition_time + CLEARING_OFFSET
        exposure = acquisition["EXPOSURE"] / 10.0 * (1 + acquisition["IMG_NUM"])
        observation_end = observation_time + timedelta(seconds=exposure)
        midpoint = observation_time + timedelta(seconds=exposure / 2)

        file_type = determine_file_type(pfw_values, False, None, SCIENCE_SHAPE)
        fits_info: dict = {"TYPECODE": file_type}
        fits_info |= organize_compression_and_acquisition_settings(compression, acquisition)
        fits_info |= organize_gain_info(camera.spacecraft_id)
        fits_info |= position_keywords
        fits_info |= {
            "PFWTIME": pfw.timestamp.isoformat(),
            "PFWSTAT": int(pfw_values["PFW_STATUS"]),
            "POSCURR": int(pfw_values["POSITION_CURR"]),
            "POSCMD": int(pfw_values["POSITION_CMD"]),
            "POSRAW": int(pfw_values["RESOLVER_POS_RAW"]),
            "POSRAW2": int(pfw_values["RESOLVER_POS_CORR"]),
        }
        fits_info |= {f"PFWPOS{i}": int(pfw_values[f"PRIMARY_RESOLVER_POSITION_{i}"]) for i in range(1, 6)}
        fits_info["RAWBITS"] = 19 if camera.instrument == "NFI" else 16
        if fits_info["ISSQRT"]:
            fits_info["BUNIT"] = "sqrt(DN)"
            fits_info["COMPBITS"] = round((fits_info["RAWBITS"] + int(np.log2(fits_info["SCALE"]))) / 2, 2)
            fits_info["DSATVAL"] = float(np.floor(np.sqrt((2**16 - 1) * fits_info["IMGCOUNT"] * fits_info["SCALE"])))
            fits_info["DESCRPTN"] = "PUNCH Level-0 data, square-root encoded DN values in camera coordinates"
        else:
            fits_info["BUNIT"] = "DN"
            fits_info["COMPBITS"] = fits_info["RAWBITS"]
            fits_info["DSATVAL"] = (2**16 - 1) * fits_info["IMGCOUNT"]
            fits_info["DESCRPTN"] = "PUNCH Level-0 data, DN values in camera coordinates"
        fits_info["COM_SET"] = int(decoded[f"{prefix}_HDR_COM_SET"][0])
        fits_info["ACQ_SET"] = int(decoded[f"{prefix}_HDR_ACQ_SET"][0])
        for key, when in (
            ("DATE-BEG", observation_time),
            ("DATE-END", observation_end),
            ("DATE-AVG", midpoint),
            ("DATE-OBS", midpoint),
            ("DATE", utcnow()),
        ):
            fits_info[key] = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        fits_info["FILEVRSN"] = self.settings.file_version
        fits_info["BOWLVRSN"] = punchbowl.__version__
        fits_info["NUM_PCKT"] = len(decoded[f"{prefix}_HDR_SEC"])
        fits_info["PCKTBYTE"] = int(sum(len(chunk) for chunk in decoded[f"{prefix}_IMG_DATA"]))

        position_info = {
            "spacecraft_id": camera.spacecraft_id,
            "datetime": observation_time,
            "interp_quat": _interpolate_attitude(xact_before, before, xact_after, after, observation_time),
        }
        wcs = form_preliminary_wcs(camera.obs, position_info, float(self.settings.plate_scale_deg[camera.obs]))
        meta = _level0_template(f"{file_type}{camera.obs}")
        for key, value in fits_info.items():
            meta[key] = value
        cube = PUNCHCube(data=image, meta=meta, wcs=wcs)
        cube.meta.provenance = telemetry_names
        cube.meta.history.add_now("punchpipe level0", f"formed by punchpipe-dagster {LEVEL0_CODE_VERSION}")
        _update_statistics(cube, modify_inplace=True)
        # The expression punchbowl's to_fits_header uses for CROTA, without building a whole header.
        cube.meta["CROTA"] = extract_crota_from_wcs(cube.wcs).to(u.deg).value

        flags = []
        zero_fraction = cube.meta["DATAZER"].value / image.size
        saturated_fraction = cube.meta["DATASAT"].value / image.size
        if zero_fraction > self.settings.zero_fraction_limit:
            flags.append(f"{zero_fraction:.1%} zero pixels")
        if saturated_fraction > self.settings.saturated_fraction_limit:
            flags.append(f"{saturated_fraction:.1%} saturated pixels")
        meta["OUTLIER"] = int(bool(flags))
        meta["BADPKTS"] = int(bool(missing))
        if missing:
            flags.append(f"{missing} packets missing")
        return cube, flags


@lru_cache(maxsize=32)
def _cached_template(product_code: str):
    from punchbowl.data import NormalizedMetadata

    return NormalizedMetadata.load_template(product_code, "0")


def _level0_template(product_code: str):
    """A fresh Level 0 metadata template (loading one from punchbowl's tables costs ~50 ms)."""
    return copy.deepcopy(_cached_template(product_code))


def _interpolate_attitude(before_packet: Packet, before: dict, after_packet: Packet, after: dict, when: datetime):
    """Spherical interpolation of the body-to-ECI quaternion, as punchbowl's control segment does."""
    import quaternion

    def to_quaternion(values: dict):
        return np.quaternion(*(values[f"ATT_DET_Q_BODY_WRT_ECI{i}"] * 0.5e-10 for i in (4, 1, 2, 3)))

    q_before, q_after = to_quaternion(before), to_quaternion(after)
    if before_packet.id == after_packet.id:
        return q_before
    return quaternion.slerp(
        q_before, q_after, before_packet.timestamp.timestamp(), after_packet.timestamp.timestamp(), when.timestamp()
    )


def _parse_fits_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f")


def configure_astropy_offline() -> None:
    """Never download IERS tables; dates outside the bundled tables only warn (punchbowl's advice)."""
    from astropy.utils import iers

    iers.conf.auto_download = False
    iers.conf.auto_max_age = None
    iers.conf.iers_degraded_accuracy = "warn"


configure_astropy_offline()
