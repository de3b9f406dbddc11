"""Level 0 image formation: packets from the catalog to ``PUNCH_L0_...`` FITS files.

The science (settings unpacking, filter-wheel product code, spacecraft position keywords,
preliminary WCS, metadata templates) is punchbowl's; this module gathers packets, decides what is
complete or unchanged, and records lineage.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from punchpipe_assets.cameras import Camera
from punchpipe_assets.config import Level0Settings
from punchpipe_assets.level0.image_packets import PacketReader, _nearest, _order_image_packets
from punchpipe_assets.level0.metadata import CLEARING_OFFSET, LEVEL0_CODE_VERSION, build_level0_cube, parse_fits_time
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import FilePacket, Packet, ProductFile, utcnow
from punchpipe_assets.telemetry.image import ImageDecodeError, decode_image_payload
from punchpipe_assets.telemetry.ingest import not_duplicate
from punchpipe_assets.telemetry.packets import PacketSet, decode_packets


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
        """Count the images with a status."""
        return sum(image.status == status for image in self.images)

    @property
    def fingerprint(self) -> str:
        """Return a digest of the window's products (the partition's data version), from content alone.

        Only the images' products count, not what this run did with them: re-forming a window that
        changed nothing ("unchanged" instead of "made") leaves the data version as it was.
        """
        digest = hashlib.sha256()
        for image in sorted(self.images, key=lambda image: image.acquisition_time):
            if image.sha256:
                digest.update(f"{image.acquisition_time.isoformat()}|{image.sha256}\n".encode())
        return digest.hexdigest()[:24]


@dataclass
class Formation:
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
    landing_dir
        The landing folder the catalogued telemetry paths are relative to.
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
        *,
        landing_dir: Path,
        now: datetime | None = None,
        run_id: str | None = None,
    ) -> None:
        self.session, self.archive, self.settings, self.packet_set = session, archive, settings, packet_set
        self.now = now or utcnow()
        self.run_id = run_id
        self.reader = PacketReader(landing_dir)
        self._engineering: dict[int, dict] = {}

    def _decode_engineering(self, packet: Packet) -> dict:
        """Decode the fields of one engineering packet, once, as many images share it."""
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
            formations = [item for item in prepared if isinstance(item, Formation)]
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
    ) -> ImageOutcome | Formation:
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
        if existing is not None and existing.fingerprint == fingerprint and self.archive.holds_product(existing):
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

        return Formation(
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

    def _position_keywords(self, formations: list[Formation]) -> list[dict]:
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

    def _write(self, formation: Formation, position_keywords: dict) -> ImageOutcome:
        """Build the cube of a prepared image, write it atomically and record its lineage."""
        camera, outcome, existing = formation.camera, formation.outcome, formation.existing
        ordered, engineering, missing = formation.ordered, formation.engineering, formation.missing
        fields = {
            p.id: self._decode_engineering(p) for p in (formation.pfw, formation.xact_before, formation.xact_after)
        }
        cube, flags = build_level0_cube(formation, position_keywords, self.settings, self.packet_set, fields)
        file_type = cube.meta["TYPECODE"].value
        path = self.archive.product_path(
            "0", file_type, camera.obs, parse_fits_time(cube.meta["DATE-OBS"].value), self.settings.file_version
        )
        sha256 = self.archive.write_cube(cube, path)
        product = existing or ProductFile(level="0", observatory=camera.obs, acquisition_time=outcome.acquisition_time)
        stored = self.archive.relative(path)
        if existing is not None and existing.path != stored:
            self.archive.absolute(existing.path).unlink(missing_ok=True)
        product.file_type, product.file_version = file_type, self.settings.file_version
        product.date_obs = parse_fits_time(cube.meta["DATE-OBS"].value)
        product.path, product.sha256, product.fingerprint = stored, sha256, formation.fingerprint
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
        outcome.status, outcome.path, outcome.sha256, outcome.file_type = "made", stored, sha256, file_type
        outcome.flags = flags
        return outcome

    def _mark(self, outcome: ImageOutcome, packets: list[Packet], status: str, reason: str) -> ImageOutcome:
        for packet in packets:
            packet.state = "pending" if status == "waiting" else "skipped"
            packet.reason, packet.last_attempt = reason, self.now
        outcome.status, outcome.reason = status, reason
        return outcome
