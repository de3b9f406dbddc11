"""Quicklooks beside the mosaics (Level 2 PTM/CTM, Level Q CTM) and the daily Level Q CTM movie, end to end."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from punchpipe_assets.level2.assets import LEVEL2_CTM, LEVEL2_PTM, level2_layers_key
from punchpipe_assets.levelq.assets import LEVELQ_CQM, LEVELQ_CTM
from punchpipe_assets.levelq.movie import LEVELQ_CTM_MOVIE
from punchpipe_assets.quicklook import is_mosaic, quicklook_path
from punchpipe_tests.chain import WFI, materialize, products, run_chain_to_level1, small_mosaic_config
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.level2.test_mosaics import metadata, parents

PARTITION = f"{SIMULATION_START:%Y-%m-%d-%H:%M}"
DAY = f"{SIMULATION_START:%Y-%m-%d}"


def test_only_mosaics_get_a_quicklook_file():
    assert is_mosaic(Path("PUNCH_L2_PTM_20250801120000_v1.fits"))
    assert is_mosaic(Path("PUNCH_LQ_CTM_20250801120000_v1.fits"))
    assert not is_mosaic(Path("PUNCH_LQ_CQM_20250801120000_v1.fits"))
    assert not is_mosaic(Path("PUNCH_L1_XM1_20250801120000_v1.fits"))
    assert not is_mosaic(Path("PUNCH_L3_CTM_20250801120000_v1.fits"))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the chain, not the storage: one backend
def test_mosaics_get_quicklooks_and_the_day_a_movie_of_its_ctm(config, instance):
    config = small_mosaic_config(config)
    config.levelq.incomplete_wait_hours = 0.0
    config.level2.incomplete_wait_hours = 0.0
    run_chain_to_level1(config, instance, SIMULATION_START, 0.25)
    materialize(config, instance, [LEVEL2_PTM, LEVEL2_CTM, *[level2_layers_key(c) for c in WFI]], [PARTITION])
    materialize(config, instance, [LEVELQ_CQM, LEVELQ_CTM], [PARTITION])

    mosaics = [*products(config, "2", ["PT", "CT"]), *products(config, "Q", ["CT"])]
    assert {(p.level, p.file_type) for p in mosaics} == {("2", "PT"), ("2", "CT"), ("Q", "CT")}
    for product in mosaics:
        png = quicklook_path(Path(config.archive_dir) / product.path)
        with Image.open(png) as image:  # the reduced trefoil is 512 px: shown whole
            assert image.format == "PNG" and image.size == (512, 512)
            assert np.asarray(image).std() > 0  # not a blank image
    assert not list(Path(config.archive_dir).glob("1/**/*.png"))  # frames get none
    for key in (LEVEL2_PTM, LEVELQ_CTM, LEVELQ_CQM):
        assert "data:image/png;base64," in metadata(instance, key)["quicklook"], key

    ctm = products(config, "Q", ["CT"])
    assert len(ctm) == 2  # clear images at 12:03 and 12:11
    materialize(config, instance, [LEVELQ_CTM_MOVIE], [DAY])
    [movie] = products(config, "Q", ["MV"])
    path = Path(config.archive_dir) / movie.path
    assert path.name == "PUNCH_LQ_MVM_20250801000000_v1.mp4" and path.parent.name == "01"
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert frames == len(ctm)
    assert sorted(p.id for p in parents(config, movie)) == sorted(p.id for p in ctm)
    values = metadata(instance, LEVELQ_CTM_MOVIE, DAY)
    assert values["status"] == "made" and [f["file"] for f in values["input_ctm_files"]] == [
        Path(p.path).name for p in ctm
    ]

    materialize(config, instance, [LEVELQ_CTM_MOVIE], [DAY])  # the same CTM: the movie is not remade
    assert metadata(instance, LEVELQ_CTM_MOVIE, DAY)["status"] == "unchanged"
    assert products(config, "Q", ["MV"])[0].sha256 == movie.sha256
