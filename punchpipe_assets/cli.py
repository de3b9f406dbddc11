"""The ``punchpipe`` command: simulate, process, status, demo, ui."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import func, select

from punchpipe_assets.config import PipelineConfig, load_config
from punchpipe_assets.resources.catalog import (
    CalibrationDelivery,
    CatalogResource,
    Packet,
    ProductFile,
    TelemetryFile,
)

console = Console(stderr=True)
INSTANCE_TEMPLATE = Path(__file__).parent / "instance" / "dagster.yaml"
DEMO_START = "2025-08-01T12:00:00"


def prepare_environment(config: PipelineConfig) -> None:
    """Point Dagster, Prefect and astropy at the installation's folders (embedded default)."""
    config.make_dirs()
    os.environ.setdefault("DAGSTER_HOME", str(config.dagster_home))
    os.environ.setdefault("PREFECT_HOME", str(config.home / "prefect"))
    os.environ.setdefault("NUMBA_CACHE_DIR", str(config.home / "numba-cache"))
    os.environ.setdefault("PUNCHPIPE_HOME", str(config.home))
    instance_yaml = Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml"
    if not instance_yaml.exists():
        Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(INSTANCE_TEMPLATE, instance_yaml)
    # The command line shows progress and a summary; punchbowl's per-step and the storage
    # migrations' INFO lines go to the Dagster run logs, not the terminal.
    for name in ("punchbowl", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def catalog_status(config: PipelineConfig) -> dict:
    """Products per level and code, and the state of every telemetry file."""
    catalog = CatalogResource(url=config.catalog_url)
    with catalog.session() as session:
        levels: dict[str, dict[str, int]] = {}
        rows = session.execute(
            select(ProductFile.level, ProductFile.file_type, ProductFile.observatory, func.count(ProductFile.id))
            .where(
                ProductFile.id.not_in(
                    select(CalibrationDelivery.file_id).where(CalibrationDelivery.file_id.is_not(None))
                )
            )
            .group_by(ProductFile.level, ProductFile.file_type, ProductFile.observatory)
        )
        for level, file_type, obs, count in rows:
            levels.setdefault(level, {})[f"{file_type}{obs}"] = count
        packet_states = dict(session.execute(select(Packet.state, func.count(Packet.id)).group_by(Packet.state)).all())
        telemetry = [
            {"file": t.name, "state": t.state, "reason": t.reason, "packets": t.n_packets}
            for t in session.scalars(select(TelemetryFile).order_by(TelemetryFile.id))
        ]
        calibration = [
            {"file": d.name, "state": d.state, "reason": d.reason}
            for d in session.scalars(select(CalibrationDelivery).order_by(CalibrationDelivery.id))
        ]
    return {"levels": levels, "packets": packet_states, "telemetry": telemetry, "calibration": calibration}


def apply_pool_limits(instance, config: PipelineConfig) -> dict[str, int]:
    """Set the instance's concurrency pool limits from the configuration (what the UI's
    Concurrency page or ``dagster instance concurrency set POOL N`` would do)."""
    limits = config.pools.model_dump()
    for pool, limit in limits.items():
        instance.event_log_storage.set_concurrency_slots(pool, limit)
    return limits


def run_process(config: PipelineConfig, instance=None, show_progress: bool = True, level1: bool = False) -> dict:
    """Do once, in this process, what the daemon's sensors and automation do, through Dagster.

    Registers calibration deliveries, then new telemetry (landing sensor logic) and materializes
    Level 0 until no new file is left, then early Level 1 of every hour that has Level 0 frames
    (``level1``; frames whose inputs did not change are not remade). Every run executes on the
    instance (default: ``DAGSTER_HOME``'s) in this one process, so punchbowl is imported once.

    Returns
    -------
    dict
        Files registered, runs executed and how many failed.
    """
    import dagster as dg

    from punchpipe_assets.definitions import build_definitions
    from punchpipe_assets.resources import ArchiveResource
    from punchpipe_assets.sensors.calibration import calibration_events, scan_calibration_landing
    from punchpipe_assets.sensors.landing import run_request_for, scan_landing, telemetry_events

    instance = instance or dg.DagsterInstance.get()
    apply_pool_limits(instance, config)
    definitions = build_definitions(config)
    catalog = CatalogResource(url=config.catalog_url)
    deliveries = scan_calibration_landing(catalog, ArchiveResource(root=str(config.archive_dir)), config)
    for event in calibration_events(deliveries):
        instance.report_runless_asset_event(event)
    summary = {"runs": 0, "failed_runs": 0, "files": 0, "calibration_files": len(deliveries)}

    def execute(job, description: str, run_request, asset_keys, progress, task) -> None:
        progress.update(task, description=description)
        result = job.execute_in_process(
            instance=instance,
            partition_key=run_request.partition_key,
            tags=run_request.tags,
            asset_selection=asset_keys,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            raise_on_error=False,
        )
        summary["runs"] += 1
        summary["failed_runs"] += not result.success
        progress.advance(task)

    level0_job = definitions.resolve_job_def("level0_job")
    while True:
        scan = scan_landing(catalog, config, max_files=10**6)
        summary["files"] += len(scan.ingested)
        for event in telemetry_events(scan):
            instance.report_runless_asset_event(event)
        if not scan.requests:
            break
        with Progress(console=console, disable=not show_progress) as progress:
            task = progress.add_task("Level 0", total=len(scan.requests))
            for request in scan.requests:
                first, last = request.partition_keys
                description = f"Level 0 {first} .. {last} obs {','.join(request.observatories)}"
                execute(level0_job, description, run_request_for(request, scan.run_key), request.asset_keys, progress, task)
        if not scan.remaining:
            break
    if level1:
        process_level1(definitions, catalog, execute, show_progress)
    return summary


def process_level1(definitions, catalog: CatalogResource, execute, show_progress: bool) -> None:
    """Early Level 1 of the hours whose Level 0 frames have no early product yet, or a newer Level 0 file.

    One partition-range run per block of consecutive hours. Frames that failed or lacked
    calibration have no product, so they are tried again; hours already up to date are not run.
    """
    from sqlalchemy import exists
    from sqlalchemy.orm import aliased

    from punchpipe_assets.assets.level1 import level1_early_key
    from punchpipe_assets.cameras import CAMERA_BY_OBS
    from punchpipe_assets.level1 import SCIENCE_CODES
    from punchpipe_assets.sensors.landing import hour_blocks, run_request_for

    early = aliased(ProductFile)
    up_to_date = exists().where(
        early.level == "1",
        early.file_type.like("X%"),
        early.observatory == ProductFile.observatory,
        early.date_obs == ProductFile.date_obs,
        early.date_created >= ProductFile.date_created,
    )
    with catalog.session() as session:
        rows = session.execute(
            select(ProductFile.acquisition_time, ProductFile.observatory)
            .where(ProductFile.level == "0", ProductFile.file_type.in_(SCIENCE_CODES), ~up_to_date)
            .distinct()
        ).all()
    touched: dict[datetime, set[str]] = {}
    for when, obs in rows:
        touched.setdefault(when.replace(minute=0, second=0, microsecond=0), set()).add(obs)
    if not touched:
        return
    job = definitions.resolve_implicit_global_asset_job_def()
    blocks = hour_blocks(touched)
    with Progress(console=console, disable=not show_progress) as progress:
        task = progress.add_task("Level 1", total=len(blocks))
        for block in blocks:
            first, last = block.partition_keys
            keys = [level1_early_key(CAMERA_BY_OBS[obs]) for obs in block.observatories]
            description = f"Level 1 early {first} .. {last} obs {','.join(block.observatories)}"
            execute(job, description, run_request_for(block, "process"), keys, progress, task)


def print_status(status: dict) -> None:
    """Print products per level and the telemetry files as tables."""
    table = Table(title="Products")
    table.add_column("level")
    table.add_column("products")
    for level, counts in sorted(status["levels"].items()):
        table.add_row(level, ", ".join(f"{code}: {n}" for code, n in sorted(counts.items())))
    console.print(table)
    telemetry = Table(title="Telemetry files")
    for column in ("file", "state", "packets", "reason"):
        telemetry.add_column(column)
    for row in status["telemetry"]:
        telemetry.add_row(row["file"], row["state"], str(row["packets"]), row["reason"] or "")
    console.print(telemetry)
    console.print(f"packets: {status['packets']}")
    if status["calibration"]:
        calibration = Table(title="Calibration deliveries")
        for column in ("file", "state", "reason"):
            calibration.add_column(column)
        for row in status["calibration"]:
            calibration.add_row(row["file"], row["state"], row["reason"] or "")
        console.print(calibration)


@click.group()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML configuration (default: $PUNCHPIPE_CONFIG or $PUNCHPIPE_HOME/punchpipe.yaml).",
)
@click.pass_context
def main(context: click.Context, config_file: str | None) -> None:
    """PUNCH Science Operations Center pipeline on Dagster."""
    context.obj = load_config(config_file)
    prepare_environment(context.obj)


@main.command()
@click.option("--start", default=DEMO_START, help="First acquisition time, ISO 8601 UTC.")
@click.option("--hours", default=1.0, show_default=True, type=float)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--size", default=2048, show_default=True, type=int, help="Frame size in pixels.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--gaps", default=0.0, show_default=True, type=float, help="Fraction of image packets dropped.")
@click.option("--replay/--no-replay", default=False, help="Write late replay files with the dropped packets.")
@click.option("--duplicates", default=0.0, show_default=True, type=float, help="Fraction of packets duplicated.")
@click.option("--damage/--no-damage", default=False, help="Truncate one file and add a garbage file.")
def simulate(
    start: str, hours: float, out: str, size: int, seed: int, gaps: float, replay: bool, duplicates: float, damage: bool
) -> None:
    """Write simulated downlink files for the four spacecraft."""
    from punchpipe_assets.simulate import simulate as write_downlinks

    report = write_downlinks(
        datetime.fromisoformat(start),
        hours,
        Path(out),
        size=size,
        seed=seed,
        gap_fraction=gaps,
        replay=replay,
        duplicate_fraction=duplicates,
        damage=damage,
    )
    console.print(f"wrote {len(report.files)} downlink files to {out}")


@main.command()
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.pass_obj
def process(config: PipelineConfig, quiet: bool) -> None:
    """Register calibration deliveries and new telemetry, make Level 0 and early Level 1, then print a summary."""
    summary = run_process(config, show_progress=not quiet, level1=True)
    print_status(catalog_status(config))
    console.print(
        f"{summary['files']} new telemetry files, {summary['runs']} Dagster runs, {summary['failed_runs']} failed"
    )
    if summary["failed_runs"]:
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(config: PipelineConfig, as_json: bool) -> None:
    """Products per level and the state of every telemetry file."""
    result = catalog_status(config)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_status(result)


@main.command()
@click.option("--hours", default=0.5, show_default=True, type=float)
@click.option("--size", default=1024, show_default=True, type=int, help="Frame size (2048 is flight size).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--start", default=DEMO_START, help="First acquisition time, ISO 8601 UTC.")
@click.pass_context
def demo(context: click.Context, hours: float, size: int, seed: int, start: str) -> None:
    """Simulate HOURS of telemetry and a calibration set, then process them to early Level 1."""
    from datetime import timedelta

    from punchpipe_assets.calibration import synthesize_calibration

    config: PipelineConfig = context.obj
    context.invoke(
        simulate,
        start=start,
        hours=hours,
        out=str(config.landing_dir),
        size=size,
        seed=seed,
        gaps=0.0,
        replay=False,
        duplicates=0.0,
        damage=False,
    )
    config.make_dirs()
    calibration = synthesize_calibration(
        Path(config.calibration_landing_dir), datetime.fromisoformat(start) - timedelta(days=1), size=size
    )
    console.print(f"wrote {len(calibration)} calibration files to {config.calibration_landing_dir}")
    config.calibration_image_size = size
    config.sensor.settle_seconds = 0  # the simulator writes each file atomically
    context.invoke(process, quiet=False)
    console.print(f"Browse the lineage: punchpipe ui  (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")


def _print_tree(node: dict, indent: str = "") -> None:
    click.echo(f"{indent}{node['file']}  sha256:{node['sha256'][:12]}")
    for parent in node["parents"]:
        _print_tree(parent, indent + "  ")
    for telemetry in node["telemetry"]:
        counts = ", ".join(f"{n} {role}" for role, n in sorted(telemetry["packets"].items()))
        click.echo(f"{indent}  <- {telemetry['file']} [{telemetry['state']}] ({counts} packets)")


@main.command()
@click.argument("product")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def lineage(config: PipelineConfig, product: str, as_json: bool) -> None:
    """Print the tree of PRODUCT (path or file name) down to its telemetry files."""
    from punchpipe_assets.lineage import find_product, lineage_tree

    with CatalogResource(url=config.catalog_url).session() as session:
        tree = lineage_tree(session, find_product(session, product))
    if as_json:
        click.echo(json.dumps(tree, indent=2))
    else:
        _print_tree(tree)


@main.command()
@click.argument("file")
@click.pass_obj
def affected(config: PipelineConfig, file: str) -> None:
    """List the products and partitions made with FILE (a calibration file or any product)."""
    from punchpipe_assets.lineage import affected_products, find_product

    with CatalogResource(url=config.catalog_url).session() as session:
        products = affected_products(session, find_product(session, file))
        rows = [(p.level, p.partition_key or "", Path(p.path).name) for p in products]
    for level, partition, name in rows:
        click.echo(f"L{level}  {partition}  {name}")
    console.print(f"{len(rows)} products, {len({(r[0], r[1]) for r in rows})} partitions")


@main.group()
def calibration() -> None:
    """Calibration files."""


@calibration.command("synthesize")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder (default: the calibration landing folder, for the sensor to pick up).",
)
@click.option("--date", "date_obs", default="2025-07-01T00:00:00", show_default=True, help="DATE-OBS of the set.")
@click.option("--version", "file_version", default="1", show_default=True)
@click.option("--size", default=2048, show_default=True, type=int)
@click.pass_obj
def calibration_synthesize(
    config: PipelineConfig, out: str | None, date_obs: str, file_version: str, size: int
) -> None:
    """Write a plausible calibration set for the simulator's cameras (flight files are not public)."""
    from punchpipe_assets.calibration import synthesize_calibration

    paths = synthesize_calibration(
        Path(out or config.calibration_landing_dir),
        datetime.fromisoformat(date_obs),
        file_version=file_version,
        size=size,
    )
    console.print(f"wrote {len(paths)} calibration files to {out or config.calibration_landing_dir}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True, type=int)
@click.pass_obj
def ui(config: PipelineConfig, host: str, port: int) -> None:
    """Open the Dagster UI (and daemon) on this installation's instance."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        apply_pool_limits(instance, config)
    command = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-m",
        "punchpipe_assets.definitions",
        "-h",
        host,
        "-p",
        str(port),
    ]
    sys.exit(subprocess.call(command))
