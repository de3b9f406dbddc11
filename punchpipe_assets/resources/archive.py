"""The product archive: PUNCH paths and atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
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

        ``skip_stats``: the header statistics were filled already (Level 0 does it itself).
        """
        from astropy.io.fits.verify import VerifyWarning
        from punchbowl.data import write_ndcube_to_fits

        with warnings.catch_warnings():
            # punchbowl's long header comments are truncated by astropy; nothing is lost but the comment.
            warnings.simplefilter("ignore", VerifyWarning)
            write_atomically(
                path,
                lambda temporary: write_ndcube_to_fits(
                    cube, str(temporary), overwrite=True, write_hash=False, skip_stats=skip_stats
                ),
            )
        return sha256_of(path)
