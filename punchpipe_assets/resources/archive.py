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
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np

if TYPE_CHECKING:
    from punchpipe_assets.resources.catalog import ProductFile


def sha256_of(path: str | os.PathLike) -> str:
    """Compute the SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_CHECKED: dict[tuple[str, int, int], str] = {}
_CHECKED_LOCK = threading.Lock()


def checksum_on_disk(path: Path) -> str | None:
    """Return the SHA-256 of a file as it is on disk now, or None if it is missing or unreadable.

    Remembered per process by (path, size, mtime): a file checked once is read again only if it
    changed since.
    """
    try:
        status = path.stat()
    except OSError:
        return None
    key = (str(path), status.st_size, status.st_mtime_ns)
    with _CHECKED_LOCK:
        known = _CHECKED.get(key)
    if known is None:
        try:
            known = sha256_of(path)
        except OSError:
            return None
        with _CHECKED_LOCK:
            _CHECKED[key] = known
    return known


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
    """Write a cube with punchbowl's ``write_ndcube_to_fits``, the same cube always giving the same file content.

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
    """The archive folder, laid out as ``{root}/{level}/{code}{obs}/{YYYY}/{MM}/{DD}/{file}``.

    The catalog stores archive paths relative to the root (``relative``), so that every host may
    mount the shared archive wherever it likes; ``absolute`` turns a catalogued path into this
    host's path. Mosaics (Level 2 PTM/CTM, Level Q CTM) get a quicklook PNG of ``quicklook_size``
    pixels beside them (``punchpipe_assets.quicklook``), written atomically after the product;
    materialization metadata carries thumbnails of ``thumbnail_size`` pixels.
    """

    root: str
    quicklook_size: int = 512
    thumbnail_size: int = 128

    def relative(self, path: str | os.PathLike) -> str:
        """Return a path under the root as the catalog stores it (POSIX, relative to the root)."""
        return Path(path).resolve().relative_to(Path(self.root).resolve()).as_posix()

    def absolute(self, stored: str | os.PathLike) -> Path:
        """Return this host's path of a catalogued (root-relative) archive path."""
        return Path(self.root) / stored

    def holds(self, stored: str | os.PathLike, sha256: str | None) -> bool:
        """Return whether a catalogued file is on disk with its catalogued checksum.

        What "unchanged" rests on: a product whose file was deleted or damaged is remade, not kept.
        """
        return sha256 is not None and checksum_on_disk(self.absolute(stored)) == sha256

    def holds_product(self, product: ProductFile) -> bool:
        """Return whether a catalogued product is on disk as catalogued, cheaply after the first time.

        The first check of a row reads the file and compares its SHA-256 with the catalogued one; if
        they agree, the file's size and modification time are stamped on the row (committed with the
        caller's session). Later checks, in any process, compare only those: a file replaced or
        written to since has another modification time and is read again. ``punchpipe verify``
        always reads every file in full.
        """
        path = self.absolute(product.path)
        try:
            status = path.stat()
        except OSError:
            return False
        if product.size == status.st_size and product.mtime_ns == status.st_mtime_ns:
            return True
        if product.sha256 is None or checksum_on_disk(path) != product.sha256:
            return False
        product.size, product.mtime_ns = status.st_size, status.st_mtime_ns
        return True

    def product_path(
        self, level: str, code: str, obs: str, date_obs: datetime, version: str, suffix: str = "fits"
    ) -> Path:
        """Return the archive path of a product.

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

    def write_cube(self, cube, path: Path, skip_stats: bool = True, skip_wcs_conversion: bool = False) -> str:
        """Write a PUNCHCube atomically and return its SHA-256.

        Written deterministically (``write_ndcube_deterministically``): the same cube always gives
        the same data and uncertainty on disk. ``skip_stats``: the header statistics were filled
        already (Level 0 does it itself). ``skip_wcs_conversion``: no celestial WCS is derived (the
        cube's WCS is not helioprojective, as a velocity map's radius/azimuth frame).
        """
        from astropy.io.fits.verify import VerifyWarning

        with warnings.catch_warnings():
            # punchbowl's long header comments are truncated by astropy; nothing is lost but the comment.
            warnings.simplefilter("ignore", VerifyWarning)
            write_atomically(
                path,
                lambda temporary: write_ndcube_deterministically(
                    cube,
                    str(temporary),
                    overwrite=True,
                    write_hash=False,
                    skip_stats=skip_stats,
                    skip_wcs_conversion=skip_wcs_conversion,
                ),
            )
        self.write_quicklook(cube, path)
        return sha256_of(path)

    def write_quicklook(self, cube, path: Path) -> Path | None:
        """Write the quicklook PNG beside a mosaic (atomically); other products get none."""
        from punchpipe_assets.quicklook import is_mosaic, png_bytes, quicklook_path, render

        if not is_mosaic(path):
            return None
        data = np.asarray(cube.data)
        png = png_bytes(render(data if data.ndim == 2 else data.reshape(-1, *data.shape[-2:])[0], self.quicklook_size))
        target = quicklook_path(path)
        write_atomically(target, lambda temporary: temporary.write_bytes(png))
        return target
