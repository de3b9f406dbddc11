"""Quicklooks: small PNG images of products for the Dagster UI, beside mosaics, and as a daily movie.

Rendering is display only (percentile stretch, square-root scaling, north up as FITS stores it
bottom-up); science stays in punchbowl. Pillow is already installed with punchbowl's dependencies.
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np

if TYPE_CHECKING:
    from punchpipe_assets.resources.archive import ArchiveResource

#: (level, code) of the mosaics that get a quicklook PNG file beside them in the archive.
MOSAIC_CODES = frozenset({("2", "PT"), ("2", "CT"), ("Q", "CT")})
QUICKLOOK_KEY = "quicklook"


def read_image(path: str | Path) -> np.ndarray:
    """Read the first image plane of a PUNCH FITS product (a polarized mosaic's first layer)."""
    from astropy.io import fits

    with warnings.catch_warnings(), fits.open(path) as hdul:
        warnings.simplefilter("ignore")
        hdu = next(h for h in hdul if getattr(h, "data", None) is not None and h.data.ndim >= 2)
        data = np.asarray(hdu.data, dtype=np.float32)
    while data.ndim > 2:
        data = data[0]
    return data


def render(data: np.ndarray, size: int, low: float = 1.0, high: float = 99.5) -> np.ndarray:
    """Render an image as 8-bit grey, at most ``size`` pixels on its longer edge, north up.

    Parameters
    ----------
    data
        A 2-D image (NaN and infinite pixels are shown black).
    size
        Longest edge of the result, pixels.
    low, high
        Percentiles of the finite pixels shown black and white (square-root stretch between).

    """
    from PIL import Image

    image = np.asarray(data, dtype=np.float64)
    finite = np.isfinite(image)
    scaled = np.zeros(image.shape, dtype=np.float64)
    if finite.any():
        lo, hi = np.percentile(image[finite], [low, high])
        span = hi - lo if hi > lo else 1.0
        scaled[finite] = np.sqrt(np.clip((image[finite] - lo) / span, 0.0, 1.0))
    grey = Image.fromarray(np.flipud((scaled * 255).round().astype(np.uint8)))
    grey.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(grey)


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode 8-bit grey pixels as a PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def quicklook_png(path: str | Path, size: int, low: float = 1.0, high: float = 99.5) -> bytes:
    """Return the PNG quicklook of a FITS product."""
    return png_bytes(render(read_image(path), size, low, high))


def markdown_image(png: bytes, caption: str) -> dg.MetadataValue:
    """Return a PNG as Markdown metadata: a data-URI image (the UI's Markdown allows ``data:`` sources)."""
    encoded = base64.b64encode(png).decode("ascii")
    return dg.MetadataValue.md(f"![{caption}](data:image/png;base64,{encoded})\n\n`{caption}`")


def newest(paths: Iterable[str]) -> str | None:
    """Return the newest of some archive paths: PUNCH names carry the observation time after the code."""
    ordered = sorted((p for p in paths if p and p.endswith(".fits")), key=lambda p: Path(p).name.split("_")[3:])
    return ordered[-1] if ordered else None


def quicklook_metadata(root: str | Path, paths: Iterable[str], size: int = 128) -> dict[str, dg.MetadataValue]:
    """Return the ``quicklook`` metadata entry of a partition: its newest product as a small PNG, or nothing.

    Parameters
    ----------
    root
        The archive root the (catalogued, root-relative) paths are under.
    paths
        The partition's product paths.
    size
        Edge of the thumbnail, pixels.

    """
    path = newest(paths)
    if path is None:
        return {}
    try:
        png = quicklook_png(Path(root) / path, size)
    except (OSError, ValueError, StopIteration) as error:  # a quicklook never fails a product
        return {QUICKLOOK_KEY: dg.MetadataValue.text(f"no quicklook of {Path(path).name}: {error}")}
    return {QUICKLOOK_KEY: markdown_image(png, Path(path).name)}


def with_quicklook(metadata: dict[str, dg.MetadataValue], archive: ArchiveResource) -> dict[str, dg.MetadataValue]:
    """Add the quicklook of the newest product listed in a partition's ``outputs`` metadata.

    What every level's materialization metadata goes through (``outputs`` lists root-relative
    paths); the thumbnail's size is the archive's ``thumbnail_size``.
    """
    outputs = metadata.get("outputs")
    entries = outputs.value if outputs is not None else []
    paths = [entry.get("path") for entry in entries or [] if isinstance(entry, dict)]
    return {**metadata, **quicklook_metadata(archive.root, [p for p in paths if p], archive.thumbnail_size)}


def quicklook_path(product: Path) -> Path:
    """Return the path of the quicklook PNG beside a product."""
    return product.with_suffix(".png")


def is_mosaic(product: Path) -> bool:
    """Return whether an archive product is a mosaic that gets a quicklook file (Level 2 PTM/CTM, Level Q CTM)."""
    parts = product.name.split("_")
    return len(parts) > 2 and (parts[1][1:], parts[2][:2]) in MOSAIC_CODES and parts[2][2:] == "M"


def write_movie(frames: Sequence[np.ndarray], path: Path, fps: int) -> None:
    """Write 8-bit grey frames (same even shape) as an H.264 MP4 with imageio-ffmpeg's own ffmpeg."""
    import imageio_ffmpeg

    height, width = frames[0].shape
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        pix_fmt_in="gray",
        pix_fmt_out="yuv420p",
        fps=fps,
        codec="libx264",
        macro_block_size=2,
        output_params=["-movflags", "+faststart"],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame, dtype=np.uint8))
    writer.close()
