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
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from punchpipe_assets.config_level1 import Level1Settings
from punchpipe_assets.config_ops import FreshnessSettings, QuicklookSettings, WatchdogSettings
from punchpipe_assets.level2.nfi_pca import NfiPcaSettings
from punchpipe_assets.level3.settings import GridWindowSettings, LowNoiseSettings, StarfieldSettings, VelocitySettings

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
    quicklook_priority: int = Field(
        8, description="Priority of QuickPUNCH automation runs (quick Level 1, Level Q): ahead of back-processing."
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


class Level2Settings(BaseModel):
    """Level 2 trefoil mosaics (punchbowl's ``level2_core_flow``) and how their inputs are grouped.

    Groups are the frames of one slot of a fixed cadence grid (``cycle_seconds`` long, boundaries
    ``cycle_offset_seconds`` after each multiple of the cycle from the mission start): the
    simulator's, and the mission's, cadence is a polarized triplet (M, Z, P 80 s apart) and every
    other cycle a clear image, every 4 minutes, the three WFI within seconds of each other.
    """

    model_config = ConfigDict(extra="forbid")

    cycle_seconds: int = Field(240, gt=0, description="Length of a cadence slot; must divide an hour.")
    cycle_offset_seconds: int = Field(
        -3,
        description="Slot boundaries relative to whole cycles from the mission start: between the last clear "
        "image of a cycle (DATE-OBS about 220 s in) and the first polarized one of the next (about 254 s).",
    )
    incomplete_wait_hours: float = Field(
        48.0, ge=0, description="How long after its slot an incomplete group waits for missing members."
    )
    trefoil_downsample: int = Field(
        1,
        ge=1,
        description="1: flight mosaics (4096x4096); 8: punchbowl's test frame (trefoil_wcs[::8, ::8], 512x512).",
    )
    trim_edges_px: int = Field(0, ge=0)
    rolloff_width: float = Field(0.25, ge=0)
    rolloff_strength: float = Field(1.0, ge=0)
    nfi_pca: NfiPcaSettings = Field(default_factory=NfiPcaSettings)

    @property
    def trefoil_shape(self) -> tuple[int, int]:
        """Shape of the mosaics: punchbowl's 4096x4096 trefoil divided by ``trefoil_downsample``."""
        return (4096 // self.trefoil_downsample, 4096 // self.trefoil_downsample)

    @field_validator("cycle_seconds")
    @classmethod
    def _divides_hour(cls, value: int) -> int:
        if 3600 % value:
            raise ValueError("cycle_seconds must divide 3600 (every hour holds whole slots)")
        return value

    @field_validator("trefoil_downsample")
    @classmethod
    def _divides_trefoil(cls, value: int) -> int:
        if 4096 % value:
            raise ValueError("trefoil_downsample must divide 4096 (the flight trefoil's size)")
        return value


class LevelQSettings(BaseModel):
    """QuickPUNCH (Level Q): CQM mosaics, CFM F-corona models, CTM and 32-minute QAM averages."""

    model_config = ConfigDict(extra="forbid")

    incomplete_wait_hours: float = Field(
        2.0, ge=0, description="How long an incomplete CQM group (fewer than 3 QR) waits before it is made."
    )
    model_spacing_hours: int = Field(6, gt=0, description="CFM grid spacing from midnight; must divide 24.")
    model_window_hours: float = Field(24.0, gt=0, description="CQM mosaics of this long before a grid time feed it.")
    model_min_inputs: int = Field(3, ge=1, description="Fewest CQM a CFM is built from.")
    model_max_inputs: int = Field(48, ge=1, description="Most CQM a CFM is built from (a seeded choice).")
    model_seed: int = Field(0, description="Seed of the choice of CQM when more than model_max_inputs exist.")
    qam_wait_hours: float = Field(2.0, ge=0, description="How long an incomplete 32-minute bin waits before made.")

    @field_validator("model_spacing_hours")
    @classmethod
    def _divides_day(cls, value: int) -> int:
        if 24 % value:
            raise ValueError("model_spacing_hours must divide 24 (a fixed grid from midnight)")
        return value

    @model_validator(mode="after")
    def _whole_grid_steps(self) -> LevelQSettings:
        if self.model_window_hours % self.model_spacing_hours:
            raise ValueError("model_window_hours must be a multiple of model_spacing_hours")
        if self.model_min_inputs > self.model_max_inputs:
            raise ValueError("model_min_inputs must not exceed model_max_inputs")
        return self


class FCoronaSettings(GridWindowSettings):
    """Level 3 F-corona models ``PF{n}``/``CF{n}`` (punchbowl's ``construct_f_corona_model``) on a fixed grid.

    A model of grid time ``t`` (every ``spacing_hours`` from the mission epoch's midnight) is built
    from the camera's Level 2 layers (``XP{n}`` for polarized, ``XR{n}`` for clear) of the
    ``half_window_hours`` before ``t`` and the ``half_window_hours`` from ``t`` on, with at least
    ``min_inputs_per_half`` on each side and at most ``max_inputs_per_half`` (a seeded choice).
    Defaults fit the mission cadence (about 15 polarized and 7 clear layers an hour per camera):
    two days either side, and at most 15 a side so that a polarized model's stack (N x 3 x 4096
    x 4096 float32, 200 MB a layer) stays near 6 GB, the large-memory pool's budget.
    """

    model_config = ConfigDict(extra="forbid")

    spacing_hours: int = Field(12, gt=0, description="Grid spacing from the epoch's midnight; must divide 24.")
    half_window_hours: float = Field(48.0, gt=0, description="Layers this long before and after a grid time feed it.")
    min_inputs_per_half: int = Field(10, ge=1, description="Fewest layers on each side of the grid time.")
    max_inputs_per_half: int = Field(15, ge=1, description="Most layers on each side (a seeded choice above).")
    seed: int = Field(0, description="Seed of the choice of layers when more than max_inputs_per_half exist.")
    num_workers: int = Field(2, ge=1, description="Worker (and loader) processes of construct_f_corona_model.")
    impossible_after_hours: float = Field(
        12.0,
        ge=0,
        description="A refused model is marked impossible this long after its window ended (no more inputs can "
        "come); consumers then take the nearest models.",
    )


class NfiFCoronaSettings(FCoronaSettings):
    """NFI F-corona models ``CFN`` from the Level 2 ``CNN`` (one every 8 minutes, 180 a day) on their own grid.

    As ``level3.fcorona``; an NFI frame (2048 x 2048 float32, 16 MB) is a twelfth of a WFI
    polarized one, so up to 90 a side (a stack near 3 GB, within the large-memory pool's budget).
    """

    min_inputs_per_half: int = Field(20, ge=1, description="Fewest CNN on each side of the grid time.")
    max_inputs_per_half: int = Field(90, ge=1, description="Most CNN on each side (a seeded choice above).")


class Level3Settings(BaseModel):
    """Level 3: F-corona and starfield models, PIM/CIM, PTM/CTM, low-noise PAM/CAM, velocity VAM."""

    model_config = ConfigDict(extra="forbid")

    fcorona: FCoronaSettings = Field(default_factory=FCoronaSettings)
    fcorona_nfi: NfiFCoronaSettings = Field(default_factory=NfiFCoronaSettings)
    starfield: StarfieldSettings = Field(default_factory=StarfieldSettings)
    low_noise: LowNoiseSettings = Field(default_factory=LowNoiseSettings)
    velocity: VelocitySettings = Field(default_factory=VelocitySettings)


class PoolSettings(BaseModel):
    """Dagster concurrency pool limits: how many steps of a pool run at once across all runs.

    Memory, not CPU, limits concurrency: ``punchbowl`` steps (Level 0, early Level 1) hold up to
    about 2 GB each, ``punchbowl_large_memory`` steps (stray-light models, late and quick Level 1)
    about 6 GB. The defaults fit a 24 GB machine.
    """

    model_config = ConfigDict(extra="forbid")

    punchbowl: int = Field(3, ge=1)
    punchbowl_large_memory: int = Field(1, ge=1)


class ExecutionSettings(BaseModel):
    """How a run's steps execute: Dagster's in-process, multiprocess or Celery executor.

    ``in_process`` (the embedded default): one process per run, punchbowl imported once per run.
    ``multiprocess``: a process per step, at most ``max_concurrent`` at once. ``celery``: steps go
    to Celery workers (``punchpipe worker``) through the broker ``$PUNCHPIPE_CELERY_BROKER``, results
    through ``$PUNCHPIPE_CELERY_BACKEND`` (URLs from the environment only: they may hold credentials),
    one queue per concurrency pool.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["in_process", "multiprocess", "celery"] = Field(
        default_factory=lambda: os.environ.get("PUNCHPIPE_EXECUTION", "in_process")
    )
    max_concurrent: int = Field(2, ge=1, description="multiprocess: steps at once (memory limits this).")

    @model_validator(mode="after")
    def _celery_needs_a_broker(self) -> ExecutionSettings:
        missing = [v for v in ("PUNCHPIPE_CELERY_BROKER", "PUNCHPIPE_CELERY_BACKEND") if not os.environ.get(v)]
        if self.mode == "celery" and missing:
            raise ValueError(
                f"execution.mode celery needs the broker and result backend URLs in ${', $'.join(missing)}"
            )
        return self


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
    run_log_level: str = Field(
        "INFO",
        pattern="^(DEBUG|INFO|WARNING|ERROR)$",
        description="Level of the runs' console log (the event log keeps all).",
    )
    calibration_image_size: int = Field(
        2048, gt=0, description="Image size calibration files must have (2048 in flight)."
    )
    level0: Level0Settings = Field(default_factory=Level0Settings)
    sensor: SensorSettings = Field(default_factory=SensorSettings)
    automation: AutomationSettings = Field(default_factory=AutomationSettings)
    stray_light: StrayLightSettings = Field(default_factory=StrayLightSettings)
    level1: Level1Settings = Field(default_factory=Level1Settings)
    level2: Level2Settings = Field(default_factory=Level2Settings)
    levelq: LevelQSettings = Field(default_factory=LevelQSettings)
    level3: Level3Settings = Field(default_factory=Level3Settings)
    pools: PoolSettings = Field(default_factory=PoolSettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    freshness: FreshnessSettings = Field(default_factory=FreshnessSettings)
    watchdog: WatchdogSettings = Field(default_factory=WatchdogSettings)
    quicklook: QuicklookSettings = Field(default_factory=QuicklookSettings)

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
    """Return a configuration under ``home`` that processes at once: no settle time, no replay wait.

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
