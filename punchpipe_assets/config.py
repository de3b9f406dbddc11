"""One validated configuration for the pipeline.

Everything local lives under one home folder, ``$PUNCHPIPE_HOME`` (default ``./var``)::

    landing/      new downlink files (.tlm) arrive here
    calibration-landing/  calibration files delivered by the instrument team
    quarantine/   unreadable downlinks, each with a ``.reason.txt``
    archive/      the product archive ({level}/{code}{obs}/{YYYY}/{MM}/{DD}/file)
    catalog.sqlite  the file catalog (embedded default)
    dagster/      DAGSTER_HOME of the embedded instance (SQLite storage)

A YAML file (``$PUNCHPIPE_CONFIG``, else ``$PUNCHPIPE_HOME/punchpipe.yaml`` if present) overrides
any field. The catalog URL may also come from ``$PUNCHPIPE_CATALOG_URL`` so that credentials stay
in the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_HOME = "var"


class Level0Settings(BaseModel):
    """Settings of Level 0 image formation."""

    model_config = ConfigDict(extra="forbid")

    replay_wait_hours: float = Field(
        48.0, ge=0, description="How long an image with missing packets waits for a replay."
    )
    file_version: str = Field("1", pattern=r"^[0-9A-Za-z]+$")
    pfw_window_seconds: float = Field(600.0, gt=0, description="Newest filter-wheel packet accepted before an image.")
    attitude_window_seconds: float = Field(
        18000.0, gt=0, description="Attitude packets accepted around an image (punchbowl: 5 h)."
    )
    plate_scale_deg: dict[str, float] = Field(
        default_factory=lambda: {"1": 0.02444, "2": 0.02444, "3": 0.02444, "4": 0.00822},
        description="Preliminary WCS plate scale per observatory, degrees per pixel.",
    )
    zero_fraction_limit: float = Field(0.05, ge=0, le=1)
    saturated_fraction_limit: float = Field(0.05, ge=0, le=1)


class SensorSettings(BaseModel):
    """Settings of the telemetry landing sensor."""

    model_config = ConfigDict(extra="forbid")

    settle_seconds: float = Field(
        5.0, ge=0, description="A file modified more recently than this is still being written."
    )
    max_files_per_tick: int = Field(20, ge=1)
    interval_seconds: int = Field(30, ge=1)


class AutomationSettings(BaseModel):
    """Declarative Automation and run priorities."""

    model_config = ConfigDict(extra="forbid")

    lookback_days: float = Field(
        3.0, gt=0, description="Late Level 0 data this many days old are still carried to Level 1 automatically."
    )
    interval_seconds: int = Field(30, ge=1, description="How often the automation sensor evaluates.")
    newest_priority: int = Field(
        10, description="Run priority (dagster/priority) of the sensor's Level 0 runs of the newest hours."
    )
    automatic_priority: int = Field(
        5, description="Priority of automation runs; operator backfills (priority 0) run behind."
    )


class StrayLightSettings(BaseModel):
    """Settings of the stray-light models (punchbowl's ``estimate_stray_light``).

    Defaults: one day of early frames per model (the model's own day), punchbowl's own
    parameters (30 CROTA bins 45 degrees wide, a 5-pixel neighbourhood every 10 pixels).
    ``min_frames`` is 51 because punchbowl's corona subtraction needs 51 inputs (clear frames, or
    M/Z/P triplets for polarized models) within 30 hours, spanning more than 6 hours.
    """

    model_config = ConfigDict(extra="forbid")

    window_days: float = Field(1.0, gt=0, description="Days of early frames per model, centred on its 12:00 UTC.")
    min_frames: int = Field(
        51, ge=1, description="Fewest inputs (clear frames, or M/Z/P triplets) a model is built from."
    )
    n_crota_bins: int = Field(30, ge=1, description="Roll-angle (CROTA) bins of each model.")
    crota_bin_width: float = Field(45.0, gt=0, le=360, description="Width of each CROTA bin, degrees.")
    stride: int = Field(10, ge=1, description="Pixels between fitted neighbourhoods (punchbowl's default).")
    window_size: int = Field(5, ge=1, description="Neighbourhood edge in pixels; odd.")
    num_workers: int = Field(2, ge=1, description="Worker processes of estimate_stray_light.")

    @field_validator("window_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("window_size must be odd (punchbowl centres the neighbourhood on a pixel)")
        return value


class PoolSettings(BaseModel):
    """Dagster concurrency pool limits: how many steps of a pool run at once across all runs.

    Memory, not CPU, limits concurrency: ``punchbowl`` steps (Level 0, early Level 1) hold up to
    about 2 GB each, ``punchbowl_large_memory`` steps (stray-light models, late and quick Level 1)
    about 6 GB. The defaults fit a 24 GB machine.
    """

    model_config = ConfigDict(extra="forbid")

    punchbowl: int = Field(3, ge=1)
    punchbowl_large_memory: int = Field(1, ge=1)


class PipelineConfig(BaseModel):
    """The whole validated configuration of one pipeline installation."""

    model_config = ConfigDict(extra="forbid")

    home: Path = Field(default_factory=lambda: Path(os.environ.get("PUNCHPIPE_HOME", DEFAULT_HOME)))
    landing_dir: Path | None = None
    calibration_landing_dir: Path | None = None
    quarantine_dir: Path | None = None
    archive_dir: Path | None = None
    dagster_home: Path | None = None
    catalog_url: str | None = None
    telemetry_definitions: Path | None = Field(
        None, description="Folder of packet-definition CSV files; default: the simulated set."
    )
    calibration_image_size: int = Field(
        2048, gt=0, description="Image size calibration files must have (2048 in flight)."
    )
    level0: Level0Settings = Field(default_factory=Level0Settings)
    sensor: SensorSettings = Field(default_factory=SensorSettings)
    automation: AutomationSettings = Field(default_factory=AutomationSettings)
    stray_light: StrayLightSettings = Field(default_factory=StrayLightSettings)
    pools: PoolSettings = Field(default_factory=PoolSettings)

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _fill_paths(self) -> PipelineConfig:
        self.landing_dir = Path(self.landing_dir or self.home / "landing").resolve()
        self.calibration_landing_dir = Path(self.calibration_landing_dir or self.home / "calibration-landing").resolve()
        self.quarantine_dir = Path(self.quarantine_dir or self.home / "quarantine").resolve()
        self.archive_dir = Path(self.archive_dir or self.home / "archive").resolve()
        self.dagster_home = Path(self.dagster_home or self.home / "dagster").resolve()
        if self.catalog_url is None:
            self.catalog_url = os.environ.get("PUNCHPIPE_CATALOG_URL") or (f"sqlite:///{self.home / 'catalog.sqlite'}")
        return self

    def make_dirs(self) -> None:
        """Create the local folders of this installation."""
        for path in (
            self.landing_dir,
            self.calibration_landing_dir,
            self.quarantine_dir,
            self.archive_dir,
            self.dagster_home,
        ):
            Path(path).mkdir(parents=True, exist_ok=True)


def load_config(path: str | os.PathLike | None = None, **overrides) -> PipelineConfig:
    """Load and validate the pipeline configuration.

    Parameters
    ----------
    path
        A YAML file; default ``$PUNCHPIPE_CONFIG``, else ``$PUNCHPIPE_HOME/punchpipe.yaml``.
    overrides
        Fields that take precedence over the file.

    Returns
    -------
    PipelineConfig
        The validated configuration, paths made absolute.
    """
    data: dict = {}
    candidate = path or os.environ.get("PUNCHPIPE_CONFIG")
    if candidate is None:
        home = Path(os.environ.get("PUNCHPIPE_HOME", DEFAULT_HOME))
        default_file = home / "punchpipe.yaml"
        candidate = default_file if default_file.exists() else None
    if candidate is not None:
        data = yaml.safe_load(Path(candidate).read_text()) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return PipelineConfig.model_validate(data)


def immediate_config(home: str | os.PathLike, catalog_url: str | None = None) -> PipelineConfig:
    """A configuration under ``home`` that processes at once: no settle time, no replay wait.

    For tests and benchmarks, where simulated files are written atomically and complete. The
    catalog is SQLite in ``home`` unless ``catalog_url`` is given. Folders are created.
    """
    home = Path(home)
    config = load_config(
        None,
        home=str(home),
        catalog_url=catalog_url or f"sqlite:///{home / 'catalog.sqlite'}",
        level0={"replay_wait_hours": 0.0},
        sensor={"settle_seconds": 0.0},
    )
    config.make_dirs()
    return config
