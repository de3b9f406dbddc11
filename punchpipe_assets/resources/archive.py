"""The product archive: PUNCH paths and atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import dagster as dg


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file through a temporary file of the same name in the same folder tree, then rename.

    Parameters
    ----------
    path
        The final path; readers see the old file or the new one, never a partial one.
    write
        Writes the file at the path it is given (which has the final base name, because
        punchbowl records the base name in the FITS header).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=path.parent))
    try:
        temporary = staging / path.name
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()


class _ChecksumDitheredFits:
    """``astropy.io.fits`` for punchbowl's writer: compressed images dithered from the data, not the clock.

    Every name is astropy's own except ``CompImageHDU``, which defaults ``dither_seed`` to
    ``DITHER_SEED_CHECKSUM`` (a seed computed from the image's first tile).
    """

    def __getattr__(self, name: str):
        from astropy.io import fits

        return getattr(fits, name)

    @staticmethod
    def CompImageHDU(*args, **kwargs):  # the name of the astropy class it stands in for
        from astropy.io import fits
        from astropy.io.fits.hdu.compressed import DITHER_SEED_CHECKSUM

        kwargs.setdefault("dither_seed", DITHER_SEED_CHECKSUM)
        return fits.CompImageHDU(*args, **kwargs)


_DETERMINISTIC_WRITE_LOCK = threading.Lock()


def write_ndcube_deterministically(cube, filename: str, **options) -> None:
    """punchbowl's ``write_ndcube_to_fits``, with the same cube always giving the same file content.

    punchbowl 0.0.25 stores float images with lossy Rice quantization. The image itself is not
    dithered (deterministic), but the uncertainty layer of Level 1 and later products is quantized
    with subtractive dithering (``quantize_method=2``) whose seed astropy takes from the clock, and
    ``write_ndcube_to_fits`` has no option to change it: the same cube written twice reads back with
    different uncertainties, so products can be neither reproduced nor compared. The seed is
    recorded in the file (``ZDITHER0``) and every FITS reader undoes the dithering with it; here it
    is derived from the data (astropy's ``DITHER_SEED_CHECKSUM``, the CFITSIO convention: a checksum
    of the first tile), so what is stored is a function of the cube alone. Everything else is
    punchbowl's writer, unchanged: for the duration of the call (one such write at a time in a
    process) its module sees the ``fits`` stand-in above instead of ``astropy.io.fits``. Level 0
    (integer images, no uncertainty layer) is written exactly as before.
    """
    from punchbowl.data import punch_io

    with _DETERMINISTIC_WRITE_LOCK:
        original = punch_io.fits
        punch_io.fits = _ChecksumDitheredFits()
        try:
            punch_io.write_ndcube_to_fits(cube, filename, **options)
        finally:
            punch_io.fits = original


class ArchiveResource(dg.ConfigurableResource):
    """The archive folder, laid out as ``{root}/{level}/{code}{obs}/{YYYY}/{MM}/{DD}/{file}``."""

    root: str

    def product_path(
        self, level: str, code: str, obs: str, date_obs: datetime, version: str, suffix: str = "fits"
    ) -> Path:
        """The archive path of a product.

        Parameters
        ----------
        level
            ``0``, ``1``, ``2``, ``3`` or ``Q``.
        code
            Two-letter product code, e.g. ``PM``.
        obs
            Observatory ``1``-``4``, ``M`` or ``N``.
        date_obs
            Observation time (naive UTC).
        version
            File version.
        suffix
            ``fits``, or ``bin`` for packed masks.
        """
        name = f"PUNCH_L{level}_{code}{obs}_{date_obs:%Y%m%d%H%M%S}_v{version}.{suffix}"
        return Path(self.root) / level / f"{code}{obs}" / f"{date_obs:%Y}" / f"{date_obs:%m}" / f"{date_obs:%d}" / name

    def write_cube(self, cube, path: Path, skip_stats: bool = True) -> str:
        """Write a PUNCHCube atomically and return its SHA-256.

        Written deterministically (``write_ndcube_deterministically``): the same cube always gives
        the same data and uncertainty on disk. ``skip_stats``: the header statistics were filled
        already (Level 0 does it itself).
        """
        from astropy.io.fits.verify import VerifyWarning

        with warnings.catch_warnings():
            # punchbowl's long header comments are truncated by astropy; nothing is lost but the comment.
            warnings.simplefilter("ignore", VerifyWarning)
            write_atomically(
                path,
                lambda temporary: write_ndcube_deterministically(
                    cube, str(temporary), overwrite=True, write_hash=False, skip_stats=skip_stats
                ),
            )
        return sha256_of(path)
