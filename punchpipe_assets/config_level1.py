"""Level 1 settings of the validated configuration: NFI dynamic stray light.

Kept beside ``config.py`` (which composes them into ``PipelineConfig``) so that neither passes
about 400 lines.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: The frame size punchbowl's NFI glint geometry (``punchbowl.constants.GLINT_*``) is given for.
FLIGHT_FRAME_SIZE = 2048


class NfiStrayLightSettings(BaseModel):
    """Arguments of punchbowl's ``remove_nfi_stray_light`` (by ``level1_nfi_core_flow``), defaults punchbowl's.

    The glint mask (sphere centres, radius, bottom cut) is punchbowl's flight geometry scaled by
    frame size / 2048, and the binned shape is the frame size / ``bin_factor`` (512 x 512 in
    flight, punchbowl's default): neither is set here. ``fwd_mat_nstray_kernels`` None is
    punchbowl's default (one kernel per binned row: 512 in flight); reduced-size runs set a few.
    """

    model_config = ConfigDict(extra="forbid")

    bin_factor: int = Field(4, ge=1, description="Binning of the frame before the inversion.")
    fwd_mat_smooth_radius: float = Field(0, ge=0, description="Azimuthal kernel smoothing, radians (0: none).")
    fwd_mat_nstray_kernels: int | None = Field(
        None, ge=1, description="Stray-light kernel orientations; None: the binned size (punchbowl's default)."
    )
    solver_tol: float = Field(1e-5, gt=0, description="Tolerance of the inversion.")
    sky_reg: float = Field(0.1, ge=0, description="Regularization of the sky source.")
    inst_reg: float = Field(0.1, ge=0, description="Regularization of the per-pixel instrument source.")
    stray_reg: float = Field(1e-10, ge=0, description="Regularization of the stray-light kernels.")
    thread_count: int = Field(5, ge=1, description="Threads of kernel generation and the inversion.")

    def arguments(self, size: int) -> dict:
        """Return the keyword arguments of ``remove_nfi_stray_light`` for a ``size`` x ``size`` frame."""
        from punchbowl.constants import (
            GLINT_MASK_BOTTOM_CUT_OFF,
            GLINT_SPHERE1_CENTER,
            GLINT_SPHERE2_CENTER,
            GLINT_SPHERE_RADIUS,
        )

        if size % self.bin_factor:
            raise ValueError(f"a {size}-px frame does not bin by bin_factor {self.bin_factor}")
        scale = size / FLIGHT_FRAME_SIZE
        return {
            **self.model_dump(),
            "sphere1_center": tuple(c * scale for c in GLINT_SPHERE1_CENTER),
            "sphere2_center": tuple(c * scale for c in GLINT_SPHERE2_CENTER),
            "glint_sphere_radius": GLINT_SPHERE_RADIUS * scale,
            "glint_bottom_cut": GLINT_MASK_BOTTOM_CUT_OFF * scale,
            "bindown_shape": (size // self.bin_factor, size // self.bin_factor),
        }


class Level1Settings(BaseModel):
    """Level 1 settings (the early, stray-light and late stages have theirs elsewhere)."""

    model_config = ConfigDict(extra="forbid")

    nfi_stray_light: NfiStrayLightSettings = Field(default_factory=NfiStrayLightSettings)
