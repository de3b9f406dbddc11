"""The ``punchpipe`` command: simulate, process, status, demo, ui."""

from __future__ import annotations

import json
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


def run_process(config: PipelineConfig, instance=None, show_progress: bool = True) -> dict:
    """Run the landing sensor's logic until no new file is left, materializing through Dagster.

    Every request runs on the instance (default: ``DAGSTER_HOME``'s) in this one process, so
    punchbowl is imported once.

    Returns
    -------
    dict
        Runs executed and their outcome.
    """
    import dagster as dg

    from punchpipe_assets.definitions import build_definitions
    from punchpipe_assets.sensors.landing import run_request_for, scan_landing, telemetry_events

    instance = instance or dg.DagsterInstance.get()
    job = build_definitions(config).resolve_job_def("level0_job")
    quiet_logs = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    summary = {"runs": 0, "failed_runs": 0, "files": 0}
    while True:
        scan = scan_landing(CatalogResource(url=config.catalog_url), config, max_files=10**6)
        summary["files"] += len(scan.ingested)
        for event in telemetry_events(scan):
            instance.report_runless_asset_event(event)
        if not scan.requests:
            break
        with Progress(console=console, disable=not show_progress) as progress:
            task = progress.add_task("Level 0", total=len(scan.requests))
            for request in scan.requests:
                run_request = run_request_for(request, scan.run_key)
                first, last = request.partition_keys
                progress.update(task, description=f"Level 0 {first} .. {last} obs {','.join(request.observatories)}")
                result = job.execute_in_process(
                    instance=instance,
                    partition_key=run_request.partition_key,
                    tags=run_request.tags,
                    asset_selection=request.asset_keys,
                    run_config=quiet_logs,
                    raise_on_error=False,
                )
                summary["runs"] += 1
                summary["failed_runs"] += not result.success
                progress.advance(task)
        if not scan.remaining:
            break
    return summary


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
    """Register new telemetry and materialize everything that is ready, then print a summary."""
    summary = run_process(config, show_progress=not quiet)
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
@click.option("--hours", default=1.0, show_default=True, type=float)
@click.option("--size", default=1024, show_default=True, type=int, help="Frame size (2048 is flight size).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--start", default=DEMO_START, help="First acquisition time, ISO 8601 UTC.")
@click.pass_context
def demo(context: click.Context, hours: float, size: int, seed: int, start: str) -> None:
    """Simulate HOURS of telemetry into the landing folder and process it."""
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
def ui(host: str, port: int) -> None:
    """Open the Dagster UI (and daemon) on this installation's instance."""
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
