"""The ``punchpipe`` command: simulate, process, status, demo, ui."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from punchpipe_assets.cli_access import products, reset
from punchpipe_assets.config import PipelineConfig, load_config
from punchpipe_assets.demo import DEMO_HOURS, DEMO_SIZE
from punchpipe_assets.diskspace import DISK_FULL_EXIT_STATUS, from_full_disk, full_folders, no_space_message
from punchpipe_assets.guard import PipelineBusy
from punchpipe_assets.resources.catalog import CatalogResource
from punchpipe_assets.runner import apply_pool_limits, console, prepare_environment, run_process
from punchpipe_assets.status import catalog_status

#: Default start of `punchpipe simulate` (a day the tests also use).
SIMULATE_START = "2025-08-01T12:00:00"
#: Exit status when another writer holds the installation (``EX_TEMPFAIL``: try again later).
BUSY_EXIT_STATUS = 75


def print_status(status: dict, telemetry: bool = True) -> None:
    """Print products per level and (with ``telemetry``) the telemetry files and deliveries as tables."""
    table = Table(title="Products")
    table.add_column("level")
    table.add_column("products")
    for level, counts in sorted(status["levels"].items()):
        table.add_row(level, ", ".join(f"{code}: {n}" for code, n in sorted(counts.items())))
    console.print(table)
    if not telemetry:
        return
    files = Table(title="Telemetry files")
    for column in ("file", "state", "packets", "reason"):
        files.add_column(column)
    for row in status["telemetry"]:
        files.add_row(Text(row["file"]), row["state"], str(row["packets"]), Text(row["reason"] or ""))
    console.print(files)
    console.print(f"packets: {status['packets']}")
    if status["calibration"]:
        calibration = Table(title="Calibration deliveries")
        for column in ("file", "state", "reason"):
            calibration.add_column(column)
        for row in status["calibration"]:
            calibration.add_row(Text(row["file"]), row["state"], Text(row["reason"] or ""))
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
@click.option("--start", default=SIMULATE_START, help="First acquisition time, ISO 8601 UTC.")
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


def exit_if_disk_full(config: PipelineConfig, error: BaseException | None = None) -> None:
    """Say "no space left on device" and exit (``DISK_FULL_EXIT_STATUS``) if a full disk caused the error or failure."""
    if (error is not None and from_full_disk(error, config)) or (error is None and full_folders(config)):
        click.echo(no_space_message(config), err=True)
        sys.exit(DISK_FULL_EXIT_STATUS)


@main.command()
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.option("--wait", "wait_seconds", default=0.0, type=float, help="Seconds to wait for another writer.")
@click.pass_obj
def process(config: PipelineConfig, quiet: bool, wait_seconds: float) -> None:
    """Do what the daemon would do now (sensors, automation), until nothing is left; print a summary.

    One writer at a time: while another ``process`` or ``backfill`` holds this home, or a daemon runs
    on the instance, it says so and exits with status 75.
    """
    try:
        summary = run_process(config, show_progress=not quiet, wait_seconds=wait_seconds)
    except PipelineBusy as busy:
        click.echo(f"not started: {busy}", err=True)
        sys.exit(BUSY_EXIT_STATUS)
    except Exception as error:
        exit_if_disk_full(config, error)
        raise
    if summary["failed_runs"]:
        exit_if_disk_full(config)
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
@click.option("--hours", default=DEMO_HOURS, show_default=True, type=float, help="Hours of telemetry, ending now.")
@click.option("--size", default=DEMO_SIZE, show_default=True, type=int, help="Frame size (2048 is flight size).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.pass_obj
def demo(config: PipelineConfig, hours: float, size: int, seed: int) -> None:
    """Simulate HOURS of telemetry ending now and a calibration delivery, then process them like the daemon."""
    from punchpipe_assets.demo import apply_demo_settings, needs_more_data, prepare_demo

    config = apply_demo_settings(config, size)
    prepared = prepare_demo(config, hours, size, seed)
    console.print(
        f"simulated {prepared['start']:%Y-%m-%d %H:%M:%S} .. {prepared['end']:%H:%M:%S} UTC: "
        f"{prepared['telemetry_files']} downlink files, {prepared['calibration_files']} calibration files"
    )
    summary = run_process(config, show_progress=True)
    print_status(catalog_status(config), telemetry=False)
    console.print(f"{summary['runs']} Dagster runs, {summary['failed_runs']} failed")
    console.print("[bold]Needs more data:[/bold]")
    for line in needs_more_data(config):
        console.print(f"  - {line}")
    console.print(f"Browse the lineage: punchpipe ui  (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    if summary["failed_runs"]:
        sys.exit(1)


@main.command()
@click.option("--start", required=True, help="First time, ISO 8601 UTC (e.g. 2025-08-01).")
@click.option("--end", required=True, help="End time (exclusive), ISO 8601 UTC.")
@click.option("--assets", "selection", default=None, help="Dagster asset selection (default: every product).")
@click.option("--no-wait", is_flag=True, help="Launch the backfill and return (the daemon runs it).")
@click.pass_obj
def backfill(config: PipelineConfig, start: str, end: str, selection: str | None, no_wait: bool) -> None:
    """Launch a Dagster backfill of every selected product partition in [START, END) and wait for it."""
    from punchpipe_assets.runner import DEFAULT_BACKFILL_SELECTION, run_backfill

    try:
        result = run_backfill(
            config,
            datetime.fromisoformat(start),
            datetime.fromisoformat(end),
            selection or DEFAULT_BACKFILL_SELECTION,
            wait=not no_wait,
        )
    except PipelineBusy as busy:
        click.echo(f"not started: {busy}", err=True)
        sys.exit(BUSY_EXIT_STATUS)
    except Exception as error:
        exit_if_disk_full(config, error)
        raise
    if result["failed_runs"]:
        exit_if_disk_full(config)
    console.print(
        f"backfill {result['backfill_id']}: {result['status']}, {result['runs']} runs, {result['failed_runs']} failed"
    )
    if result["failed_runs"] or result["status"] not in ("REQUESTED", "COMPLETED_SUCCESS", "COMPLETED"):
        sys.exit(1)


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


@main.command()
@click.option("--repair", is_flag=True, help="Remake missing or damaged products from their inputs (a backfill).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def verify(config: PipelineConfig, repair: bool, as_json: bool) -> None:
    """Compare every archive file with its catalogued checksum; report (and with --repair remake) the rest.

    Exits 1 while a problem remains.
    """
    from dataclasses import asdict

    from punchpipe_assets.runner import run_backfill
    from punchpipe_assets.verify import repair_selectors, verify_archive

    checked, problems = verify_archive(config)
    if repair and (selectors := repair_selectors(problems)):
        epoch = datetime(2000, 1, 1)
        try:
            result = run_backfill(config, epoch, epoch, "*", selectors=selectors, show_progress=not as_json)
        except PipelineBusy as busy:
            click.echo(f"not repaired: {busy}", err=True)
            sys.exit(BUSY_EXIT_STATUS)
        if not as_json:
            console.print(f"repair backfill {result['backfill_id']}: {result['status']}, {result['runs']} runs")
        checked, remaining = verify_archive(config)
        repaired = [p for p in problems if p.path not in {r.path for r in remaining}]
        problems = remaining
    else:
        repaired = []
    if as_json:
        report = {"checked": checked, "problems": [asdict(p) for p in problems]}
        click.echo(json.dumps(report | {"repaired": [p.path for p in repaired]}, indent=2))
    else:
        for problem in problems:
            what = f"{problem.asset} {problem.partition}" if problem.asset else "delivered: deliver it again"
            click.echo(
                f"{problem.problem:8} {problem.path}  ({what}; made from {len(problem.made_from)} files, "
                f"used by {len(problem.used_by)})"
            )
        console.print(f"{checked} files checked, {len(problems)} missing or damaged, {len(repaired)} repaired")
    if problems:
        sys.exit(1)


@main.command()
@click.option(
    "--queues",
    default="punchbowl,punchbowl_large_memory,dagster",
    show_default=True,
    help="Comma-separated Celery queues (one per concurrency pool; `dagster` for steps outside the pools, "
    "such as the CTM movie) this worker takes steps from.",
)
@click.option("--name", default=None, help="Worker name (default: punchpipe-QUEUES@host).")
@click.pass_obj
def worker(config: PipelineConfig, queues: str, name: str | None) -> None:
    """Start a Celery worker for runs executed with ``execution.mode: celery``.

    One step at a time, acknowledged when done (a step of a worker that dies goes back to the
    queue), punchbowl imported once when the worker starts. Broker and result backend from
    ``$PUNCHPIPE_CELERY_BROKER`` and ``$PUNCHPIPE_CELERY_BACKEND``.
    """
    import socket

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    name = name or f"punchpipe-{'-'.join(wanted)}@{socket.gethostname()}"
    command = [
        sys.executable, "-m", "celery", "-A", "punchpipe_assets.celery_app", "worker",
        "--queues", ",".join(wanted), "--concurrency", "1", "--prefetch-multiplier", "1",
        "--hostname", name, "--loglevel", "INFO",
    ]  # fmt: skip
    from punchpipe_assets.ui import child_environment

    # The worker replaces this process: signals (a supervisor's TERM) reach Celery itself; it loads
    # the configuration this command loaded (``--config``).
    env = child_environment(config_file_given()) | {"PUNCHPIPE_HOME": str(config.home)}
    os.execve(sys.executable, command, env)


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
    """Write a plausible calibration set and bootstrap models for the simulator's cameras.

    Flight files are not public; the models let late Level 1, Level 2 and Level Q run before the
    pipeline has made its own.
    """
    from punchpipe_assets.calibration.bootstrap import synthesize_delivery

    paths = synthesize_delivery(
        Path(out or config.calibration_landing_dir),
        datetime.fromisoformat(date_obs),
        size=size,
        trefoil_downsample=config.level2.trefoil_downsample,
        file_version=file_version,
    )
    console.print(f"wrote {len(paths)} calibration files to {out or config.calibration_landing_dir}")


def config_file_given() -> str | None:
    """Return the ``--config`` file of the command line being run, if it named one."""
    return click.get_current_context().find_root().params.get("config_file")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True, type=int)
@click.pass_obj
def ui(config: PipelineConfig, host: str, port: int) -> None:
    """Run the Dagster UI and daemon on this installation's instance, restarting either if it dies."""
    import dagster as dg

    from punchpipe_assets.ui import run_ui

    with dg.DagsterInstance.get() as instance:
        apply_pool_limits(instance, config)
    sys.exit(run_ui(Path(os.environ["DAGSTER_HOME"]), host, port, config_file_given()))


main.add_command(products)
main.add_command(reset)
