"""Quicklook rendering and files: what the UI and the archive get, on real FITS files."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from ndcube import NDCube
from PIL import Image

from punchpipe_assets.quicklook import markdown_image, newest, quicklook_metadata, quicklook_png, render
from punchpipe_assets.resources.archive import ArchiveResource


def test_render_is_north_up_bounded_and_survives_nan():
    image = np.zeros((64, 32))
    image[:8, :] = 10.0  # the first FITS rows are the bottom of the picture
    image[0, 0] = np.nan
    pixels = render(image, 16)
    assert pixels.dtype == np.uint8 and pixels.shape == (16, 8)  # longer edge 16, aspect kept
    assert pixels[-1].mean() > 200 and pixels[0].mean() < 10
    assert render(np.full((8, 8), np.nan), 8).max() == 0  # nothing finite: black, no error


def test_quicklook_metadata_shows_the_newest_product_as_a_data_uri_png(tmp_path):
    for name, value in (("PUNCH_L1_XM1_20250801120000_v1.fits", 1.0), ("PUNCH_L1_XM1_20250801125600_v1.fits", 2.0)):
        data = np.tile(np.linspace(0, value, 256, dtype=np.float32), (256, 1))
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data)]).writeto(tmp_path / name)
    paths = ["PUNCH_L1_XM1_20250801125600_v1.fits", "PUNCH_L1_XM1_20250801120000_v1.fits"]
    assert newest(paths) == "PUNCH_L1_XM1_20250801125600_v1.fits"
    entry = quicklook_metadata(tmp_path, paths, 64)["quicklook"]
    assert "PUNCH_L1_XM1_20250801125600_v1.fits" in entry.value
    png = base64.b64decode(entry.value.split("base64,", 1)[1].split(")", 1)[0])
    assert png == quicklook_png(tmp_path / paths[0], 64)
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    assert "no quicklook" in quicklook_metadata(tmp_path, ["PUNCH_L1_XM1_20250801130000_v1.fits"])["quicklook"].value
    assert quicklook_metadata(tmp_path, []) == {}
    assert markdown_image(png, "x").value.startswith("![x](data:image/png;base64,")


def test_the_archive_writes_a_quicklook_beside_mosaics_only(tmp_path):
    archive = ArchiveResource(root=str(tmp_path), quicklook_size=32)
    cube = NDCube(np.random.default_rng(0).normal(size=(3, 64, 64)), wcs=WCS(naxis=3))
    mosaic = Path(tmp_path) / "2" / "PTM" / "PUNCH_L2_PTM_20250801120000_v1.fits"
    written = archive.write_quicklook(cube, mosaic)
    assert written == mosaic.with_suffix(".png") and Image.open(written).size == (32, 32)
    assert not list(written.parent.glob(".staging-*"))  # written atomically
    assert archive.write_quicklook(cube, Path(tmp_path) / "PUNCH_L1_XM1_20250801120000_v1.fits") is None
