"""The four PUNCH cameras and how telemetry names them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Camera:
    """One PUNCH camera.

    Attributes
    ----------
    obs
        Observatory number as it appears in product names ("1"-"4").
    slug
        Asset-name suffix, e.g. ``wfi2``.
    spacecraft_id
        Spacecraft identifier carried in the packets' secondary header. The flight mapping of
        MOC to SOC identifiers is not public; these values are the simulated set.

    """

    obs: str
    slug: str
    spacecraft_id: int

    @property
    def instrument(self) -> str:
        """``WFI`` or ``NFI``."""
        return "NFI" if self.obs == "4" else "WFI"


CAMERAS: tuple[Camera, ...] = (
    Camera("1", "wfi1", 0x2C),
    Camera("2", "wfi2", 0x10),
    Camera("3", "wfi3", 0xF9),
    Camera("4", "nfi4", 0x2F),
)
CAMERA_BY_SPACECRAFT_ID = {camera.spacecraft_id: camera for camera in CAMERAS}
CAMERA_BY_OBS = {camera.obs: camera for camera in CAMERAS}
