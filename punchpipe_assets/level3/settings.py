"""Settings of the Level 3 products after ``PIM``/``CIM``: starfield models, low-noise averages, velocity maps."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class GridWindowSettings(BaseModel):
    """Validation shared by the models on a fixed grid with a window of inputs a side (F-corona, starfield).

    Subclasses declare ``spacing_hours`` (must divide 24) and ``min_inputs_per_half`` /
    ``max_inputs_per_half`` (the minimum must not exceed the maximum).
    """

    @field_validator("spacing_hours", check_fields=False)
    @classmethod
    def _divides_day(cls, value: int) -> int:
        if 24 % value:
            raise ValueError("spacing_hours must divide 24 (a fixed grid from midnight)")
        return value

    @model_validator(mode="after")
    def _min_below_max(self) -> GridWindowSettings:
        if self.min_inputs_per_half > self.max_inputs_per_half:
            raise ValueError("min_inputs_per_half must not exceed max_inputs_per_half")
        return self


class StarfieldSettings(GridWindowSettings):
    """Level 3 starfield models ``PSM``/``CSM`` (punchbowl's ``generate_starfield_background``) on a fixed grid.

    A model of grid time ``t`` (every ``spacing_hours`` from the epoch's midnight: a grid of days
    by default) is built from the ``PIM`` (``PSM``) or ``CIM`` (``CSM``) of the
    ``half_window_hours`` before ``t`` and from ``t`` on, at least ``min_inputs_per_half`` a side,
    at most ``max_inputs_per_half`` (a seeded choice). ``map_scale`` is the sky map's degrees per
    pixel (punchbowl's default 0.01 for flight mosaics; reduced test mosaics need about 0.16).
    """

    model_config = ConfigDict(extra="forbid")

    spacing_hours: int = Field(24, gt=0, description="Grid spacing from the epoch's midnight (24: daily); divides 24.")
    half_window_hours: float = Field(48.0, gt=0, description="PIM/CIM this long before and after a grid time feed it.")
    min_inputs_per_half: int = Field(20, ge=1, description="Fewest PIM/CIM on each side of the grid time.")
    max_inputs_per_half: int = Field(200, ge=1, description="Most PIM/CIM on each side (a seeded choice above).")
    seed: int = Field(0, description="Seed of the choice of inputs when more than max_inputs_per_half exist.")
    map_scale: float = Field(0.01, gt=0, le=1, description="Degrees per pixel of the starfield sky map.")
    target_mem_usage: float = Field(1000.0, gt=0, description="punchbowl's target memory use (MB) of the build.")
    num_workers: int = Field(2, ge=1, description="Processes of generate_starfield_background (n_procs).")
    impossible_after_hours: float = Field(
        12.0,
        ge=0,
        description="A refused model is marked impossible this long after its window ended (no more inputs can "
        "come); consumers then take the nearest models.",
    )


class LowNoiseSettings(BaseModel):
    """Level 3 low-noise ``PAM``/``CAM``: 32-minute bins of ``PTM``/``CTM`` (45 a day from midnight)."""

    model_config = ConfigDict(extra="forbid")

    wait_hours: float = Field(2.0, ge=0, description="How long after its end an incomplete bin waits before made.")


class VelocitySettings(BaseModel):
    """Level 3 velocity maps ``VAM`` (punchbowl's ``track_velocity``): 6-hour bins of Level 3 ``PTM``."""

    model_config = ConfigDict(extra="forbid")

    min_inputs: int = Field(24, ge=2, description="Fewest PTM in a 6-hour bin for a VAM to be made.")
    delta_t: int = Field(12, ge=1, description="track_velocity's offset in frames between correlated images.")
    sparsity: int = Field(2, ge=1, description="track_velocity's frame skip interval for averaging.")
    n_ofs: int = Field(151, ge=3, description="track_velocity's number of spatial offsets of the correlation.")

    @model_validator(mode="after")
    def _enough_frames(self) -> VelocitySettings:
        if self.min_inputs <= self.delta_t:
            raise ValueError("min_inputs must exceed delta_t (track_velocity correlates frames delta_t apart)")
        return self
