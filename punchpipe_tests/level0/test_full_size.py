"""Full-size (2048x2048) Level 0 through Dagster against punchbowl's own decoder: the science tier."""

from collections import Counter
from datetime import timedelta

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from punchpipe_assets.cli import run_process
from punchpipe_assets.level0.metadata import CLEARING_OFFSET
from punchpipe_assets.resources.catalog import FilePacket, Packet, ProductFile
from punchpipe_assets.simulate import simulate
from punchpipe_assets.telemetry import decode_packets, load_packet_set
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.level0.test_assets import land

pytestmark = pytest.mark.science


@pytest.mark.parametrize("backend", ["postgresql"])
def test_full_size_level0_matches_punchbowl_decoding(config, catalog, instance, tmp_path):
    from punchbowl.auto.flows.level0 import decode_image_packets

    report = simulate(SIMULATION_START, 0.1, tmp_path / "sim", size=2048, seed=11)
    land(report.files, config)
    summary = run_process(config, instance, show_progress=False)
    assert summary["failed_runs"] == 0

    image_definition = load_packet_set().by_kind("image")
    acquisitions = {(obs, when): code for obs, when, code in report.images}
    with catalog.session() as session:
        products = session.scalars(select(ProductFile).order_by(ProductFile.date_obs)).all()
        assert Counter((p.observatory, p.file_type) for p in products) == Counter(
            (obs, code) for (obs, _), code in acquisitions.items()
        )
        for product in products[:: max(1, len(products) // 6)]:
            packets = session.scalars(
                select(Packet)
                .join(FilePacket, FilePacket.packet_id == Packet.id)
                .where(FilePacket.file_id == product.id, FilePacket.role == "image")
                .order_by(Packet.seq_count)
            ).all()
            raws = []
            for packet in packets:
                with open(config.landing_dir / packet.telemetry_file.path, "rb") as handle:
                    handle.seek(packet.byte_offset)
                    raws.append(handle.read(packet.length))
            payload = np.concatenate(decode_packets(image_definition, raws)["SCI_XFI_IMG_DATA"])
            expected = decode_image_packets(payload, {"JPEG": 1, "CMP_BYP": 0})
            with fits.open(config.archive_dir / product.path) as hdul:
                header, data = hdul[1].header, hdul[1].data
                np.testing.assert_array_equal(data, expected)
                assert data.shape == (2048, 2048)
                assert header["TYPECODE"] == acquisitions[(product.observatory, product.acquisition_time)]
                begin = product.acquisition_time + CLEARING_OFFSET
                assert header["DATE-BEG"] == begin.isoformat(timespec="milliseconds")
                middle = begin + timedelta(seconds=header["EXPTIME"] / 2)
                assert header["DATE-OBS"] == middle.isoformat(timespec="milliseconds")
                assert header["NUM_PCKT"] == len(packets) and header["BADPKTS"] == 0 and header["OUTLIER"] == 0
                assert np.isfinite(header["CRVAL1"]) and header["FILEVRSN"] == "1"
