"""``punchpipe products`` and ``punchpipe reset``: finding products and clearing an installation."""

from __future__ import annotations

import json
from datetime import datetime

import click
import dagster as dg
from rich.table import Table
from rich.text import Text

from punchpipe_assets.access import find_products, reset_installation, reset_targets
from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.guard import PipelineBusy
from punchpipe_assets.runner import console

#: Exit status of a refused reset (``EX_NOPERM``).
REFUSED_EXIT_STATUS = 77


def _time(value: str | None) -> datetime | None:
    """Parse an ISO time option (naive UTC, as the catalog stores it)."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=None)
    except ValueError as error:
        raise click.BadParameter(f"{value!r} is not an ISO time (e.g. 2026-01-01T12:00)") from error


@click.command()
@click.option("--level", default=None, help="Product level: 0, 1, 2, 3 or Q.")
@click.option("--code", default=None, help="Type code (CT) or type code and observatory (CTM, PM1).")
@click.option("--start", default=None, help="Observation time from (ISO, UTC, included).")
@click.option("--end", default=None, help="Observation time to (ISO, UTC, excluded).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def products(
    config: PipelineConfig, level: str | None, code: str | None, start: str | None, end: str | None, as_json: bool
) -> None:
    """Find products in the catalog: path, time, version, checksum, partition."""
    found = find_products(config, level, code, _time(start), _time(end))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    table = Table(title=f"{len(found)} products")
    for column in ("level", "code", "date_obs", "version", "partition", "sha256", "path"):
        table.add_column(column, overflow="fold")
    for row in found:
        table.add_row(
            row["level"],
            row["code"],
            row["date_obs"],
            row["file_version"],
            row["partition"] or "",
            row["sha256"][:12],
            Text(row["path"]),
        )
    console.print(table)


@click.command()
@click.option("--archive", "with_archive", is_flag=True, help="Also delete every file in the archive.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--production", is_flag=True, help="Allow resetting a PostgreSQL (production) installation.")
@click.pass_obj
def reset(config: PipelineConfig, with_archive: bool, yes: bool, production: bool) -> None:
    """Clear the installation's Dagster storage and catalog (and with --archive, the archive).

    Telemetry and calibration deliveries in the landing folders are kept; after a reset without
    --archive, deliver the calibration again or the archive's files are orphans.
    """
    instance = dg.DagsterInstance.get()
    targets = reset_targets(config, instance, with_archive)
    if targets.production_reasons and not production:
        console.print(
            "refused: this looks like a production installation ("
            + "; ".join(targets.production_reasons)
            + "): add --production to reset it"
        )
        raise SystemExit(REFUSED_EXIT_STATUS)
    console.print("punchpipe reset deletes:")
    for item in targets.items:
        console.print(Text(f"  - {item}"))
    console.print(Text(f"and keeps {config.landing_dir} and {config.calibration_landing_dir}"))
    if not yes and not click.confirm("Delete these?", default=False):
        console.print("nothing deleted")
        raise SystemExit(1)
    try:
        reset_installation(config, instance, with_archive)
    except PipelineBusy as busy:
        console.print(Text(f"refused: {busy}"))
        raise SystemExit(75) from None
    console.print("reset done")
