"""``punchpipe demo``: recent simulated telemetry and a calibration delivery, processed as the daemon would.

The data end now, so the daemon (``punchpipe ui``) carries later data on automatically too; the
demo's settings (image size, reduced trefoil, no settle time) are written to the home's
``punchpipe.yaml`` unless one exists, so every later command on the home loads the same.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import yaml
from sqlalchemy import func, select

from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.resources.catalog import CatalogResource, ProductFile, Wait, utcnow

#: Frame size of the demo: every level runs on two cores within about 15 minutes.
DEMO_SIZE = 256
DEMO_HOURS = 1.0


def demo_settings(size: int) -> dict:
    """Return the configuration fields the demo sets: frames of ``size`` pixels, a reduced trefoil below flight size."""
    return {
        "calibration_image_size": size,
        "sensor": {"settle_seconds": 0},
        "level2": {"trefoil_downsample": 1 if size >= 2048 else 8},
    }


def apply_demo_settings(config: PipelineConfig, size: int) -> PipelineConfig:
    """Return the configuration with the demo's settings; write them to ``$PUNCHPIPE_HOME/punchpipe.yaml`` if absent."""
    settings = demo_settings(size)
    path = Path(config.home) / "punchpipe.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump(settings))
    data = config.model_dump(mode="json")
    for key, value in settings.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return PipelineConfig.model_validate(data)


def prepare_demo(config: PipelineConfig, hours: float, size: int, seed: int, end: datetime | None = None) -> dict:
    """Simulate ``hours`` of telemetry ending at ``end`` (default now) and a calibration delivery before it.

    Returns
    -------
    dict
        ``start``, ``end``, ``telemetry_files``, ``calibration_files``.

    """
    from punchpipe_assets.calibration.bootstrap import synthesize_delivery
    from punchpipe_assets.simulate import simulate

    end = (end or utcnow()).replace(microsecond=0)
    start = end - timedelta(hours=hours)
    config.make_dirs()
    report = simulate(start, hours, Path(config.landing_dir), size=size, seed=seed)
    delivered = synthesize_delivery(
        Path(config.calibration_landing_dir), start - timedelta(days=1), size, config.level2.trefoil_downsample
    )
    return {"start": start, "end": end, "telemetry_files": len(report.files), "calibration_files": len(delivered)}


def needs_more_data(config: PipelineConfig, now: datetime | None = None) -> list[str]:
    """Report what is not made yet because data are missing, and how much more is needed."""
    now = now or utcnow()
    lines = []
    with CatalogResource(url=config.catalog_url).session() as session:
        by_asset: dict[str, list[Wait]] = {}
        for wait in session.scalars(select(Wait).order_by(Wait.asset_key, Wait.until)):
            by_asset.setdefault(wait.asset_key, []).append(wait)
        for asset_key, waits in by_asset.items():
            first = waits[0]
            what = f"{asset_key} {first.partition_key}" if len(waits) == 1 else f"{asset_key}: {len(waits)} partitions"
            lines.append(
                f"{what} wait{'s' if len(waits) == 1 else ''} for more inputs, the first until "
                f"{first.until:%Y-%m-%dT%H:%M} ({first.partition_key}: {first.reason})"
            )
        # One round trip: the pipeline's products by level, code and observatory.
        made = {
            (level, code, obs): n
            for level, code, obs, n in session.execute(
                select(ProductFile.level, ProductFile.file_type, ProductFile.observatory, func.count(ProductFile.id))
                .where(ProductFile.state == "created")
                .group_by(ProductFile.level, ProductFile.file_type, ProductFile.observatory)
            )
        }

    def count(level: str, codes: tuple[str, ...], observatories: str | None = None) -> int:
        """Products of a level and codes (of some observatories only, when given)."""
        return sum(
            n
            for (lv, code, obs), n in made.items()
            if lv == level and code in codes and (observatories is None or obs in observatories)
        )

    counts = {code: count("1", (code,)) for code in ("XR", "XM")}
    pipeline_cfm = count("Q", ("CF",))
    pipeline_fcorona = count("3", ("PF", "CF"), "123")  # the WFI models (CFN is NFI's)
    nfi_clear = count("1", ("XR",), "4")
    pipeline_cnn = count("2", ("CN",))
    pipeline_starfield = count("3", ("PS", "CS"))
    stray = config.stray_light
    lines.append(
        f"stray-light models (S?): built once a day at 12:00 from {stray.window_days:g} day of early frames; "
        f"punchbowl needs {stray.min_frames} clear frames (and M/Z/P triplets) of {2048}x{2048} pixels spanning "
        f"more than 6 h; there are {counts.get('XR', 0)} XR and {counts.get('XM', 0)} XM frames of "
        f"{config.calibration_image_size} pixels: late and quick Level 1 use the bootstrap models"
    )
    if not pipeline_cfm:
        spacing = config.levelq.model_spacing_hours
        next_grid = now.replace(minute=0, second=0, microsecond=0)
        next_grid += timedelta(hours=(-next_grid.hour) % spacing or spacing)
        lines.append(
            f"QuickPUNCH F-corona models (CFM): the first is built at {next_grid:%Y-%m-%d %H:%M} UTC from the CQM of "
            f"the {config.levelq.model_window_hours:g} h before (at least {config.levelq.model_min_inputs}); until "
            "then CTM use the bootstrap models"
        )
    fcorona = config.level3.fcorona
    if not pipeline_fcorona:
        lines.append(
            f"Level 3 F-corona models (PF?/CF?): one every {fcorona.spacing_hours} h, each from the Level 2 layers of "
            f"the {fcorona.half_window_hours:g} h before and after (at least {fcorona.min_inputs_per_half} a side); "
            "refused until then, and PIM/CIM use the bootstrap models"
        )
    starfield = config.level3.starfield
    if not pipeline_starfield:
        lines.append(
            f"Level 3 starfield models (PSM/CSM): one every {starfield.spacing_hours} h, each from the PIM/CIM of the "
            f"{starfield.half_window_hours:g} h before and after (at least {starfield.min_inputs_per_half} a side); "
            "refused until then, and PTM/CTM use the bootstrap models"
        )
    pca = config.level2.nfi_pca
    if not pipeline_cnn:
        lines.append(
            f"NFI PCA background (CNN, AR4, SR4): a {pca.batch_hours} h batch window needs at least {pca.min_frames} "
            f"clear NFI frames with its context (one every 8 minutes: {pca.min_frames * 8 / 60:g} h of NFI data; "
            f"punchbowl's PCA fits 100 components); there are {nfi_clear} XR4 frames. The NFI F-corona models (CFN) "
            f"need at least {config.level3.fcorona_nfi.min_inputs_per_half} CNN a side. Not built yet: Level 3 NFI, "
            "QuickPUNCH QNN"
        )
    return lines
