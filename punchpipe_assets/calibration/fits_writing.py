"""Writing the synthetic calibration files: PUNCH metadata, FITS HDUs and atomic-write callbacks.

``synthesize_calibration`` and the bootstrap models fill punchbowl's metadata templates here
and serialize their cubes and PSF models in the formats punchbowl's readers expect.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np

from punchpipe_assets.calibration.kinds import kind_for_code

_STRUCTURAL_KEYWORDS = {
    "SIMPLE",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "NAXIS3",
    "EXTEND",
    "EXTNAME",
    "PCOUNT",
    "GCOUNT",
    "CHECKSUM",
    "DATASUM",
}


@lru_cache(maxsize=64)
def _template(product_code: str):
    from punchbowl.data import NormalizedMetadata

    return NormalizedMetadata.load_template(product_code, "1")


def _metadata(code: str, obs: str, date_obs: datetime, file_version: str):
    """``NormalizedMetadata.load_template`` (cached: it parses YAML each time) filled in."""
    kind = kind_for_code(code)
    meta = copy.deepcopy(_template(kind.template[code] + obs))
    meta["TYPECODE"] = code
    meta["DATE-OBS"] = date_obs.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    meta["DATE"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    meta["FILEVRSN"] = file_version
    meta.history.add_now("punchpipe calibration", "synthetic calibration for the simulated cameras")
    return meta


def _metadata_cards(meta, filename: str) -> list:
    """PUNCH metadata as header cards for a primary header (no structural or WCS keywords)."""
    meta["FILENAME"] = filename
    header = meta.to_fits_header(wcs=None)
    return [card for card in header.cards if card.keyword not in _STRUCTURAL_KEYWORDS]


def _punch_cube_hdul(cube, filename: str, tile_shape: tuple[int, ...], celestial_wcs=None):
    """Build the HDUs ``punchbowl.data.write_ndcube_to_fits`` writes for a PUNCHCube, with larger tiles.

    Same HDUs (empty primary, compressed data with the full PUNCH header, WCS extensions,
    provenance table) and same header (``NormalizedMetadata.to_fits_header`` with the celestial
    WCS); only the compression tiles are larger than punchbowl's one-row tiles, which makes
    writing and reading a 5x2048x2048 quartic cube about 3 times faster. Statistics are not
    computed (``skip_stats=True``) and there is no uncertainty layer.
    """
    from astropy.io import fits
    from punchbowl.data.punch_io import _make_provenance_hdu

    cube.meta["FILENAME"] = filename
    header = cube.meta.to_fits_header(wcs=cube.wcs, write_celestial_wcs=True, celestial_wcs=celestial_wcs)
    data = cube.data.astype(np.float32) if cube.data.dtype == np.float64 else cube.data
    hdul = cube.wcs.to_fits()
    hdul[0] = fits.PrimaryHDU()
    hdul.insert(1, fits.CompImageHDU(data=data, header=header, name="Primary data array", tile_shape=tile_shape))
    hdul.append(_make_provenance_hdu(cube.meta.provenance))
    return hdul


def _serialize(hdul) -> bytes:
    buffer = io.BytesIO()
    hdul.writeto(buffer, checksum=True)
    return buffer.getvalue()


def _psf_extension_bytes(transform) -> bytes:
    """Return the extensions of regularizepsf's FITS format (``ArrayPSFTransform.save``), serialized once.

    Same extension names and quantization; tiles of 1024 patches instead of one row each (one-row
    tiles make a 2048x2048 model take minutes to write and ~50 s to load).
    """
    from astropy.io import fits

    kernel = transform._transfer_kernel.values
    tiles = (min(1024, kernel.shape[0]), *kernel.shape[1:])
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.CompImageHDU(np.asarray(transform.coordinates, dtype=np.int32), name="coordinates"),
            fits.CompImageHDU(kernel.real, name="transfer_real", quantize_level=32, tile_shape=tiles),
            fits.CompImageHDU(kernel.imag, name="transfer_imag", quantize_level=32, tile_shape=tiles),
        ]
    )
    whole = _serialize(hdul)
    primary = len(_serialize(fits.HDUList([fits.PrimaryHDU()])))
    return whole[primary:]


def _hdul_writer(hdul) -> Callable[[Path], None]:
    return lambda temporary: hdul.writeto(temporary, checksum=True)


def _bytes_writer(*parts: bytes) -> Callable[[Path], None]:
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            for part in parts:
                handle.write(part)

    return write
