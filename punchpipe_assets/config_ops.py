"""Operations settings of the validated configuration: freshness, the product-count watchdog, quicklooks.

Kept beside ``config.py`` (which composes them into ``PipelineConfig``) so that neither passes
about 400 lines.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The mission cadence of one camera's Level 0 in one hour: a polarized triplet every 4 minutes,
#: a clear image every other cycle, a dark at minute 59 (what the simulator writes).
LEVEL0_CADENCE = {"PM": 15, "PZ": 15, "PP": 15, "CR": 8, "DK": 1}
#: Early Level 1 of one camera in one hour: every Level 0 science frame (darks are not carried on).
LEVEL1_EARLY_CADENCE = {"XM": 15, "XZ": 15, "XP": 15, "XR": 8}
#: QuickPUNCH CTM in one hour: one per clear cadence slot.
LEVELQ_CTM_CADENCE = {"CT": 8}


class FreshnessSettings(BaseModel):
    """How stale the near-real-time products may get before Dagster warns and fails their freshness.

    Dagster's ``FreshnessPolicy.time_window``: an asset is fresh while its newest materialization is
    younger than ``warn_minutes``; it warns past that and fails past ``fail_minutes``. Level 0 follows
    each downlink (every orbit, about 95 minutes, plus a landing and processing margin); QuickPUNCH
    is for forecasters and follows Level 0 by the quick Level 1 and mosaic steps.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Attach freshness policies to Level 0 and Level Q products.")
    level0_warn_minutes: float = Field(120.0, ge=1, description="Level 0: warn when older than this.")
    level0_fail_minutes: float = Field(240.0, ge=1, description="Level 0: fail when older than this.")
    levelq_warn_minutes: float = Field(180.0, ge=1, description="Level Q (CQM, CTM): warn when older than this.")
    levelq_fail_minutes: float = Field(360.0, ge=1, description="Level Q (CQM, CTM): fail when older than this.")

    @model_validator(mode="after")
    def _warn_before_fail(self) -> FreshnessSettings:
        for level in ("level0", "levelq"):
            if getattr(self, f"{level}_warn_minutes") >= getattr(self, f"{level}_fail_minutes"):
                raise ValueError(f"freshness.{level}_warn_minutes must be less than {level}_fail_minutes")
        return self


def _cadence(values: dict[str, int]) -> dict[str, int]:
    if not values:
        raise ValueError("a cadence needs at least one product code")
    for code, count in values.items():
        if len(code) not in (2, 3) or not code.isalpha() or not code.isupper():
            raise ValueError(f"{code!r} is not a product code (two or three capital letters)")
        if count < 0:
            raise ValueError(f"{code}: an hour cannot hold {count} products")
    return values


class WatchdogSettings(BaseModel):
    """The operators' product-count watchdog: products made in each hour against the mission cadence.

    The asset check ``product_count`` warns about an hour of a camera (or of the mosaics) holding
    fewer than ``min_fraction`` of the cadence's products of a code.
    """

    model_config = ConfigDict(extra="forbid")

    level0_per_hour: dict[str, int] = Field(
        default_factory=lambda: dict(LEVEL0_CADENCE), description="Level 0 products of one camera per hour."
    )
    level1_early_per_hour: dict[str, int] = Field(
        default_factory=lambda: dict(LEVEL1_EARLY_CADENCE), description="Early Level 1 of one camera per hour."
    )
    levelq_ctm_per_hour: dict[str, int] = Field(
        default_factory=lambda: dict(LEVELQ_CTM_CADENCE), description="QuickPUNCH CTM per hour."
    )
    min_fraction: float = Field(1.0, gt=0, le=1, description="Fewest products of a code, as a fraction of cadence.")

    @field_validator("level0_per_hour", "level1_early_per_hour", "levelq_ctm_per_hour")
    @classmethod
    def _valid_cadence(cls, value: dict[str, int]) -> dict[str, int]:
        return _cadence(value)


class QuicklookSettings(BaseModel):
    """Quicklooks: the PNG thumbnails in materialization metadata and beside mosaics, the daily movie."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(128, ge=16, le=1024, description="Edge of the metadata thumbnail, pixels.")
    file_size: int = Field(512, ge=16, le=4096, description="Edge of the PNG written beside each mosaic, pixels.")
    movie_size: int = Field(256, ge=16, le=2048, description="Edge of the daily Level Q CTM movie, pixels.")
    movie_fps: int = Field(8, ge=1, le=60, description="Frames per second of the daily movie.")
    low_percentile: float = Field(1.0, ge=0, lt=100, description="Shown black: this percentile of the finite pixels.")
    high_percentile: float = Field(99.5, gt=0, le=100, description="Shown white: this percentile.")

    @field_validator("size", "file_size", "movie_size")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("quicklook sizes must be even (the movie codec's macroblocks)")
        return value

    @model_validator(mode="after")
    def _low_below_high(self) -> QuicklookSettings:
        if self.low_percentile >= self.high_percentile:
            raise ValueError("quicklook.low_percentile must be less than high_percentile")
        return self
