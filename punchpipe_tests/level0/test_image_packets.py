"""Level 0 images from their packets: the newest copy of a segment wins, missing segments are flagged."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path

import dagster as dg
import numpy as np
from astropy.io import fits
from sqlalchemy import select

from punchpipe_assets.cameras import CAMERA_BY_OBS
from punchpipe_assets.cli import run_process
from punchpipe_assets.level0.assets import IMAGE_QUALITY_CHECK, level0_key
from punchpipe_assets.level0.image_packets import SEQ_MODULUS
from punchpipe_assets.resources.archive import sha256_of
from punchpipe_assets.resources.catalog import FilePacket, Packet, ProductFile, TelemetryFile
from punchpipe_assets.simulate import simulate
from punchpipe_assets.telemetry import frame_packets, load_packet_set
from punchpipe_assets.telemetry.image import decode_image_payload
from punchpipe_assets.telemetry.ingest import decode_rows
from punchpipe_assets.telemetry.packets import decode_packets
from punchpipe_tests.conftest import SIMULATION_START

SIZE = 64
CAMERA = CAMERA_BY_OBS["2"]
PACKET_SET = load_packet_set()


def image_packets(data: bytes) -> dict[datetime, list[tuple[int, int, int]]]:
    """(offset, length, sequence count) of the image packets of a downlink, by acquisition time."""
    framed = frame_packets(data, PACKET_SET).packets
    images: dict[datetime, list[tuple[int, int, int]]] = defaultdict(list)
    for row in decode_rows(data, framed, PACKET_SET):
        if row["kind"] == "image":
            images[row["timestamp"]].append((row["byte_offset"], row["length"], row["seq_count"]))
    return images


def decoded_image(raws: list[bytes]) -> np.ndarray:
    """Decode the image the packets of one acquisition carry."""
    definition = PACKET_SET.by_kind("image")
    decoded = decode_packets(definition, raws)
    return decode_image_payload(b"".join(bytes(chunk) for chunk in decoded[f"{definition.name}_IMG_DATA"]))


def level0_products(catalog) -> dict[datetime, ProductFile]:
    with catalog.session() as session:
        return {p.acquisition_time: p for p in session.scalars(select(ProductFile).where(ProductFile.level == "0"))}


def test_the_newest_copy_of_a_differing_segment_wins(config, catalog, instance, tmp_path):
    """An image's segments arriving again in a later downlink with other content: the later copies make it."""
    first = simulate(
        SIMULATION_START, 0.1, tmp_path / "a", size=SIZE, seed=31, cameras=[CAMERA], packet_payload_bytes=512
    )
    other = simulate(
        SIMULATION_START, 0.1, tmp_path / "b", size=SIZE, seed=32, cameras=[CAMERA], packet_payload_bytes=512
    )
    (first_file,), (other_file,) = first.files, other.files
    old_data, new_data = first_file.read_bytes(), other_file.read_bytes()
    old_images, new_images = image_packets(old_data), image_packets(new_data)
    # An acquisition whose segments have the same sequence counts in both, but other bytes.
    when = next(
        t
        for t in sorted(old_images)
        if len(old_images[t]) > 1 and [c for *_, c in old_images[t]] == [c for *_, c in new_images.get(t, [])]
    )
    new_raws = [new_data[offset : offset + length] for offset, length, _ in new_images[when]]
    old_raws = [old_data[offset : offset + length] for offset, length, _ in old_images[when]]
    assert not set(new_raws) & set(old_raws)
    expected = decoded_image(new_raws)
    assert not np.array_equal(expected, decoded_image(old_raws))

    (Path(config.landing_dir) / first_file.name).write_bytes(old_data)
    assert run_process(config, instance, show_progress=False)["failed_runs"] == 0
    before = level0_products(catalog)
    untouched = {
        t: (p.sha256, (config.archive_dir / p.path).stat().st_mtime_ns) for t, p in before.items() if t != when
    }
    assert when in before and untouched

    resent = "PUNCH_TLM_2_20250801120000_resent.tlm"  # the image's segments again, with other content
    (Path(config.landing_dir) / resent).write_bytes(b"".join(new_raws))
    assert run_process(config, instance, show_progress=False)["failed_runs"] == 0

    after = level0_products(catalog)
    product = after[when]
    assert product.sha256 != before[when].sha256 and sha256_of(config.archive_dir / product.path) == product.sha256
    with fits.open(config.archive_dir / product.path) as hdul:
        assert np.array_equal(hdul[1].data, expected)
    with catalog.session() as session:
        made_from = session.execute(
            select(TelemetryFile.name)
            .join(Packet, Packet.telemetry_file_id == TelemetryFile.id)
            .join(FilePacket, FilePacket.packet_id == Packet.id)
            .where(FilePacket.file_id == product.id, FilePacket.role == "image")
        ).all()
        superseded = session.execute(
            select(Packet.state, Packet.reason)
            .join(TelemetryFile)
            .where(TelemetryFile.name == first_file.name, Packet.kind == "image", Packet.timestamp == when)
        ).all()
    assert [name for (name,) in made_from] == [resent] * len(new_raws)
    assert set(superseded) == {("skipped", "superseded by a newer copy of the same segment")}
    for t, (sha256, mtime_ns) in untouched.items():  # the other images: not rewritten
        assert (after[t].sha256, (config.archive_dir / after[t].path).stat().st_mtime_ns) == (sha256, mtime_ns)


def test_an_image_formed_with_missing_packets_is_flagged_badpkts_and_warned_about(config, catalog, instance, tmp_path):
    """After the replay wait, an image missing a segment whose payload still decodes is formed and flagged.

    A lost JPEG-LS segment practically never leaves a decodable payload; here the sequence counts of
    one image skip a count (segment 2 of N lost, by the counts) while its payload stays whole.
    """
    report = simulate(
        SIMULATION_START, 0.1, tmp_path / "sim", size=SIZE, seed=33, cameras=[CAMERA], packet_payload_bytes=512
    )
    (downlink,) = report.files
    data = bytearray(downlink.read_bytes())
    images = image_packets(bytes(data))
    when = next(t for t in sorted(images) if len(images[t]) >= 3)
    for offset, _, count in images[when][1:]:  # every segment after the first one count later
        shifted = (count + 1) % SEQ_MODULUS
        data[offset + 2] = (data[offset + 2] & 0xC0) | (shifted >> 8)
        data[offset + 3] = shifted & 0xFF
    (Path(config.landing_dir) / downlink.name).write_bytes(bytes(data))
    assert run_process(config, instance, show_progress=False)["failed_runs"] == 0  # replay wait 0: formed now

    products = level0_products(catalog)
    assert set(products) == {t for _, t, _ in report.images}  # every image formed, the flagged one too
    flagged = products[when]
    assert flagged.bad_packets and flagged.flags == "1 packets missing"
    for product in products.values():
        with fits.open(config.archive_dir / product.path) as hdul:
            assert hdul[1].header["BADPKTS"] == (product is flagged), product.path
            if product is flagged:
                assert hdul[1].header["NUM_PCKT"] == len(images[when])

    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=level0_key(CAMERA), asset_partitions=["2025-08-01-12:00"]), limit=5
    ).records
    metadata = record.asset_materialization.metadata
    assert metadata["frames_flagged"].value == 1
    assert [o["flags"] for o in metadata["outputs"].value if o["path"] == flagged.path] == [["1 packets missing"]]
    check_key = dg.AssetCheckKey(level0_key(CAMERA), IMAGE_QUALITY_CHECK)
    execution = instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key])[check_key]
    evaluation = execution.event.dagster_event.event_specific_data
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["flagged_images"].value == [{"path": flagged.path, "flags": ["1 packets missing"]}]
    assert evaluation.metadata["not_formed_count"].value == 0
