"""Image payloads: JPEG-LS of square-root coded pixels, as flown."""

from __future__ import annotations

import numpy as np
from imagecodecs import JpeglsError, jpegls_decode, jpegls_encode

# Row widths of flight frames: science frames are 2048 wide, overscan frames 2176.
_FLIGHT_WIDTHS = (2048, 2176)


class ImageDecodeError(ValueError):
    """An image payload that cannot be decoded."""


def decode_image_payload(payload: bytes) -> np.ndarray:
    """Decode one image payload to camera coordinates.

    Follows punchbowl's ``auto.flows.level0.decode_image_packets`` for the JPEG-LS path (the
    pixels are stored column-major: the decoded raster is transposed); frames of other sizes,
    as the simulator writes them, are transposed the same way.

    Parameters
    ----------
    payload
        The concatenated image bytes of all packets of one image.

    Returns
    -------
    numpy.ndarray
        The image, uint16.

    Raises
    ------
    ImageDecodeError
        If the start or end marker is missing or the JPEG-LS stream is damaged.

    """
    if b"\xff\xd8" not in payload:
        raise ImageDecodeError("image payload has no JPEG start-of-image marker (FF D8)")
    if b"\xff\xd9" not in payload:
        raise ImageDecodeError("image payload has no JPEG end-of-image marker (FF D9): packets missing")
    try:
        raster = jpegls_decode(payload)
    except JpeglsError as error:
        raise ImageDecodeError(f"damaged JPEG-LS stream: {error}") from error
    if raster.ndim != 2:
        raise ImageDecodeError(f"decoded image has {raster.ndim} dimensions, expected 2")
    pixels = raster.astype(np.uint16) if raster.max(initial=0) < 2**16 else raster.astype(np.uint32)
    width = pixels.shape[1]
    if pixels.size > 2048 * 2048 and width not in _FLIGHT_WIDTHS:
        width = _FLIGHT_WIDTHS[1]
    return np.ravel(pixels)[: width * (pixels.size // width)].reshape((-1, width)).T


def encode_image_payload(image: np.ndarray) -> bytes:
    """Encode an image in camera coordinates as the camera does (inverse of ``decode_image_payload``)."""
    return bytes(jpegls_encode(np.ascontiguousarray(image.T).astype(np.uint16)))
