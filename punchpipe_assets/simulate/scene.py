"""The simulated sky and spacecraft: a synthetic corona with drifting stars, attitude and orbit."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
from punchbowl.level1.sqrt import encode_sqrt
from scipy.spatial.transform import Rotation

from punchpipe_assets.cameras import Camera

POLARIZER_ANGLES = {"PM": -60.0, "PZ": 0.0, "PP": 60.0}
_STAR_EPOCH = datetime(2025, 1, 1)
_J2000 = datetime(2000, 1, 1, 12)
_GAIN, _READ_NOISE, _BIAS, _DARK = 4.9, 2.0, 100.0, 3.0  # e-/DN, DN, DN, DN
_ORBIT_RADIUS_KM, _ORBIT_PERIOD_S, _INCLINATION = 6980.0, 95 * 60.0, math.radians(97.8)
_SQRT_LUT = encode_sqrt(np.arange(2**16), from_bits=16, to_bits=10).astype(np.uint16)


class Scene:
    """Static corona of one camera, its stars, and noisy 10-bit frames of them."""

    def __init__(self, camera: Camera, size: int, seed: int) -> None:
        rng = np.random.default_rng([seed, int(camera.obs), 0])
        self.size, nfi = size, camera.instrument == "NFI"
        y, x = np.ogrid[0:size, 0:size]
        y, x = y.astype(np.float32), x.astype(np.float32)
        cx, cy = (size / 2, size / 2) if nfi else (-0.3 * size, size / 2)
        r0, peak = (size / 12, 30000.0) if nfi else (0.3 * size, 25000.0)
        r, theta = np.hypot(x - cx, y - cy), np.arctan2(y - cy, x - cx)
        streamers = 1 + sum(
            np.float32(rng.uniform(0.05, 0.15)) * np.cos(int(k) * theta + np.float32(rng.uniform(0, 2 * np.pi)))
            for k in rng.integers(2, 9, size=4)
        )
        clear = (peak * (np.maximum(r, r0) / r0) ** -2.5 * streamers).astype(np.float32)
        if nfi:
            clear[r < r0] = 20.0
        self.base = {"CR": clear, "DK": np.full((size, size), _DARK, np.float32)}
        for code, angle in POLARIZER_ANGLES.items():
            self.base[code] = (0.5 * clear * (1 + 0.3 * np.cos(2 * (theta - np.radians(angle))))).astype(np.float32)

        count = 300
        self.sigma = max(0.7, size / 2048)
        self.star_x, self.star_y = rng.uniform(0, size, count), rng.uniform(0, size, count)
        self.star_flux = np.minimum(200 * rng.uniform(0, 1, count) ** (-1 / 1.5), 40000) * 2 * np.pi * self.sigma**2
        self.drift = np.array([10.0 if nfi else 2.0, 0.5]) * size / 2048  # px per hour
        self.center, self.occulter = (cx, cy), (r0 if nfi else 0.0)

    def _add_stars(self, image: np.ndarray, when: datetime, scale: float) -> None:
        hours = (when - _STAR_EPOCH).total_seconds() / 3600
        x = (self.star_x + self.drift[0] * hours) % self.size
        y = (self.star_y + self.drift[1] * hours) % self.size
        flux = self.star_flux * scale * (np.hypot(x - self.center[0], y - self.center[1]) >= self.occulter)
        half = int(np.ceil(3 * self.sigma))
        steps = np.arange(-half, half + 1)
        ix, iy = np.floor(x).astype(int)[:, None] + steps, np.floor(y).astype(int)[:, None] + steps
        gx = np.exp(-0.5 * ((ix - x[:, None]) / self.sigma) ** 2)
        gy = np.exp(-0.5 * ((iy - y[:, None]) / self.sigma) ** 2)
        gx, gy = gx / gx.sum(1, keepdims=True), gy / gy.sum(1, keepdims=True)
        stamps = flux[:, None, None] * gy[:, :, None] * gx[:, None, :]
        np.add.at(image, ((iy % self.size)[:, :, None], (ix % self.size)[:, None, :]), stamps.astype(np.float32))

    def frame(self, when: datetime, code: str, rng: np.random.Generator) -> np.ndarray:
        """Render a square-root coded frame (uint16, at most 1023) of one acquisition."""
        image = self.base[code].copy()
        if code != "DK":
            self._add_stars(image, when, 1.0 if code == "CR" else 0.5)
        sigma = np.sqrt(image / _GAIN + _READ_NOISE**2)
        image += sigma * rng.standard_normal(image.shape, dtype=np.float32) + _BIAS
        np.clip(image + 0.5, 0, 65535, out=image)
        # Same as encode_sqrt(image, 16, 10); transposed so that encode_image_payload need not copy.
        return _SQRT_LUT[image.astype(np.uint16)].T


def _sun_direction(days: np.ndarray) -> np.ndarray:
    """Compute unit vectors to the Sun in ECI (low-precision almanac formula), shape (n, 3)."""
    mean_lon, anomaly = np.radians(280.460 + 0.9856474 * days), np.radians(357.528 + 0.9856003 * days)
    lon = mean_lon + np.radians(1.915) * np.sin(anomaly) + np.radians(0.020) * np.sin(2 * anomaly)
    eps = np.radians(23.439 - 4e-7 * days)
    return np.stack([np.cos(lon), np.cos(eps) * np.sin(lon), np.sin(eps) * np.sin(lon)], axis=1)


def attitude_and_orbit(camera: Camera, times: list[datetime]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body-to-ECI quaternions (x, y, z, w), ECEF positions (km) and velocities (km/s)."""
    index = int(camera.obs) - 1
    seconds = np.array([(t - _J2000).total_seconds() for t in times])
    days = seconds / 86400
    sun = _sun_direction(days)
    north = np.array([0.0, -np.sin(np.radians(23.439)), np.cos(np.radians(23.439))])  # ecliptic pole
    z0 = north - (sun @ north)[:, None] * sun
    z0 /= np.linalg.norm(z0, axis=1, keepdims=True)
    y0 = np.cross(z0, sun)
    roll = np.radians(120.0 * index + 0.2 * np.sin(2 * np.pi * seconds / _ORBIT_PERIOD_S + index))[:, None]
    y_axis = np.cos(roll) * y0 + np.sin(roll) * z0
    matrices = np.stack([sun, y_axis, np.cross(sun, y_axis)], axis=2)  # columns: body axes in ECI
    quaternions = Rotation.from_matrix(matrices).as_quat(canonical=True)

    def ecef(offset: float) -> np.ndarray:
        s = seconds + offset
        node = np.arctan2(sun[:, 1], sun[:, 0]) + np.pi / 2  # dawn-dusk orbit
        u = 2 * np.pi * s / _ORBIT_PERIOD_S + index * np.pi / 2
        p = np.stack([np.cos(node), np.sin(node), np.zeros_like(node)], axis=1)
        q = np.stack(
            [
                -np.sin(node) * np.cos(_INCLINATION),
                np.cos(node) * np.cos(_INCLINATION),
                np.full_like(node, np.sin(_INCLINATION)),
            ],
            axis=1,
        )
        eci = _ORBIT_RADIUS_KM * (np.cos(u)[:, None] * p + np.sin(u)[:, None] * q)
        gmst = np.radians(280.46061837 + 360.98564736629 * s / 86400)
        c, g = np.cos(gmst), np.sin(gmst)
        return np.stack([c * eci[:, 0] + g * eci[:, 1], -g * eci[:, 0] + c * eci[:, 1], eci[:, 2]], axis=1)

    return quaternions, ecef(0.0), ecef(0.5) - ecef(-0.5)
