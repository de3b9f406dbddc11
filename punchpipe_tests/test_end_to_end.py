"""End to end with real processes: dagster-daemon and dagster-webserver on PostgreSQL storage.

Telemetry dropped into the landing folder is registered by the landing sensor (running in the
daemon), which launches the Level 0 runs; everything is then checked through the webserver's
GraphQL API, as the UI sees it. Finally a backfill of two cameras is launched through GraphQL and
must leave every product untouched (incremental formation).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from punchpipe_assets.cameras import CAMERAS
from punchpipe_assets.simulate import simulate
from punchpipe_tests.conftest import SIMULATION_START, create_postgres_database, drop_postgres_database
from punchpipe_tests.daemon_waits import (
    AUTOMATION_SENSOR,
    LANDING_SENSOR,
    WAITS_SENSOR,
    Budget,
    runs,
    sensor_ticks,
    wait_for,
    wait_for_evaluation,
    wait_until_settled,
)
from punchpipe_tests.network import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PARTITION = "2025-08-01-12:00"
SENSOR_NAME = LANDING_SENSOR
SENSOR_NAME_TAG = "dagster/sensor_name"
BACKFILL_TAG = "dagster/backfill"
SIZE = 128
STARTUP_TIMEOUT = 120.0
SENSOR_RUNS_TIMEOUT = 300.0
BACKFILL_TIMEOUT = 300.0
#: Every wait of the Level 0 test after start-up (STARTUP_TIMEOUT): below the 1,200 s pytest timeout.
LANDING_BUDGET = 600.0
SENSOR_INTERVAL = 5
SETTLE_SECONDS = 1
SHA256 = re.compile(r"^[0-9a-f]{64}$")

MATERIALIZATIONS_QUERY = """
query Materializations($assetKey: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $assetKey) {
    __typename
    ... on Asset {
      assetMaterializations(partitions: $partitions) {
        runId
        partition
        timestamp
        metadataEntries {
          __typename
          label
          ... on IntMetadataEntry { intRepr }
          ... on JsonMetadataEntry { jsonString }
          ... on TextMetadataEntry { text }
        }
      }
    }
  }
}
"""

RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status jobName tags { key value } }
    ... on PythonError { message }
  }
}
"""

RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status jobName tags { key value } assetSelection { path } } }
    ... on PythonError { message }
  }
}
"""

WORKSPACE_QUERY = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
    ... on PythonError { message }
  }
}
"""

LAUNCH_BACKFILL_MUTATION = """
mutation LaunchBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
    ... on PythonError { stack }
  }
}
"""

BACKFILL_QUERY = """
query Backfill($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill {
      id
      status
      partitionNames
      error { message }
      runs { runId status tags { key value } }
    }
    ... on Error { message }
  }
}
"""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


class GraphQL:
    """A minimal client of the webserver's GraphQL endpoint."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/graphql"
        self.session = requests.Session()

    def __call__(self, query: str, **variables: Any) -> dict:
        """Run a query or mutation; return its data, failing on GraphQL errors."""
        response = self.session.post(self.url, json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), f"GraphQL errors: {body['errors']}"
        return body["data"]


@contextmanager
def dagster_process(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Iterator[subprocess.Popen]:
    """Run a Dagster command in its own process group; terminate the group (children too) on exit."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    process.log_path = log_path  # type: ignore[attr-defined]
    try:
        yield process
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group of ``process``, then SIGKILL whatever is left of it."""
    pgid = process.pid  # start_new_session: the process leads its own group
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    # Children (code servers, run workers) may outlive the leader: kill the rest of the group.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def ensure_alive(*processes: subprocess.Popen) -> Callable[[], None]:
    """Return a check that fails as soon as one of the processes has exited."""

    def check() -> None:
        for process in processes:
            code = process.poll()
            if code is not None:
                pytest.fail(f"{' '.join(map(str, process.args[:2]))} exited with code {code}")

    return check


def print_logs(log_dir: Path, tail_chars: int = 30000) -> None:
    """Print the end of each process log (shown by pytest when the test fails)."""
    for path in sorted(log_dir.glob("*.log")):
        text = path.read_text(errors="replace")
        print(f"\n===== {path.name} ({len(text)} chars, last {tail_chars}) =====\n{text[-tail_chars:]}")


def metadata(materialization: dict) -> dict[str, Any]:
    """Return the metadata entries of a materialization as plain Python values."""
    values: dict[str, Any] = {}
    for entry in materialization["metadataEntries"]:
        if "intRepr" in entry:
            values[entry["label"]] = int(entry["intRepr"])
        elif "jsonString" in entry:
            values[entry["label"]] = json.loads(entry["jsonString"])
        elif "text" in entry:
            values[entry["label"]] = entry["text"]
    return values


def materializations(gql: GraphQL, asset: str, partition: str | None = None) -> list[dict]:
    """Return the materializations of an asset (one partition if given), newest first."""
    variables: dict[str, Any] = {"assetKey": {"path": [asset]}}
    if partition is not None:
        variables["partitions"] = [partition]
    result = gql(MATERIALIZATIONS_QUERY, **variables)["assetOrError"]
    if result["__typename"] != "Asset":  # AssetNotFoundError until the first event
        return []
    return sorted(result["assetMaterializations"], key=lambda m: float(m["timestamp"]), reverse=True)


def run(gql: GraphQL, run_id: str) -> dict:
    """One run: status and tags (as a dict)."""
    result = gql(RUN_QUERY, runId=run_id)["runOrError"]
    assert result["__typename"] == "Run", result
    return {**result, "tags": {tag["key"]: tag["value"] for tag in result["tags"]}}


def land(files: list[Path], landing: Path) -> None:
    """Drop downlinks into the landing folder as a ground station would: written aside, then renamed."""
    landing.mkdir(parents=True, exist_ok=True)
    staged = []
    for path in files:
        part = landing / f".{path.name}.part"
        shutil.copyfile(path, part)
        staged.append((part, landing / path.name))
    for part, target in staged:
        os.replace(part, target)


def runs_summary(gql: GraphQL) -> str:
    """All runs with status and instigating tags, for failure messages."""
    try:
        result = gql(RUNS_QUERY, filter={})["runsOrError"]
        return json.dumps(result, indent=1)
    except Exception as error:  # noqa: BLE001 - diagnostics only
        return f"(runs unavailable: {error!r})"


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Two fresh PostgreSQL databases: Dagster storage and file catalog."""
    storage_url = create_postgres_database()
    try:
        catalog_url = create_postgres_database()
        try:
            yield storage_url, catalog_url
        finally:
            drop_postgres_database(catalog_url)
    finally:
        drop_postgres_database(storage_url)


@pytest.fixture
def installation(tmp_path: Path, databases: tuple[str, str]) -> dict[str, Any]:
    """Folders, configuration and process environment of a production-like installation."""
    storage_url, catalog_url = databases
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    home = tmp_path / "punchpipe_home"
    home.mkdir()
    config_path = tmp_path / "punchpipe.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "catalog_url": catalog_url,
                "sensor": {"settle_seconds": SETTLE_SECONDS, "interval_seconds": SENSOR_INTERVAL},
                "level0": {"replay_wait_hours": 0},
            }
        )
    )
    (tmp_path / "prefect").mkdir()
    (tmp_path / "logs").mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_PG_URL": storage_url,
        "PUNCHPIPE_HOME": str(home),
        "PUNCHPIPE_CONFIG": str(config_path),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PUNCHPIPE_CATALOG_URL", None)  # the config file names the catalog
    return {"env": env, "home": home, "logs": tmp_path / "logs", "tmp": tmp_path, "dagster_home": dagster_home}


def initialize_storage(env: dict[str, str]) -> None:
    """Create the Dagster schema once, so that daemon and webserver do not race to create it."""
    code = "import dagster as dg\ninstance = dg.DagsterInstance.get()\ninstance.get_runs(limit=1)\ninstance.dispose()\n"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=120)


@contextmanager
def running_dagster(env: dict[str, str], log_dir: Path) -> Iterator[tuple[GraphQL, Callable[[], None]]]:
    """dagster-daemon and dagster-webserver on the installation, code location loaded.

    Yields the GraphQL client and a check that both processes are alive; prints their logs if
    the body fails.
    """
    workspace = str(REPO / "workspace.yaml")
    port = free_port()
    initialize_storage(env)
    try:
        with (
            dagster_process("daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace], env, log_dir) as daemon,
            dagster_process(
                "webserver",
                [str(BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(port)],
                env,
                log_dir,
            ) as webserver,
        ):
            alive = ensure_alive(daemon, webserver)
            gql = GraphQL(port)
            check_workspace_loads(gql, alive)
            yield gql, alive
    except BaseException:
        print_logs(log_dir)
        raise


def test_landing_to_level0_through_daemon_and_webserver(installation):
    """Downlinks in, Level 0 out: sensor, daemon, runs, webserver, backfill, all as separate processes."""
    env, home, log_dir = installation["env"], installation["home"], installation["logs"]
    started = time.monotonic()
    budget = Budget(LANDING_BUDGET)
    with running_dagster(env, log_dir) as (gql, alive):
        print(f"webserver and code location up after {time.monotonic() - started:.1f} s")
        report = simulate(SIMULATION_START, 0.25, installation["tmp"] / "sim", size=SIZE, seed=11)
        telemetry = {path.name for path in report.files}
        landed_at = time.time()
        land(report.files, home / "landing")

        first = check_sensor_runs(gql, alive, telemetry, home / "archive", landed_at, budget)
        print(f"sensor runs done after {time.monotonic() - started:.1f} s")
        check_backfill_is_incremental(gql, alive, first, budget)
        print(f"backfill done after {time.monotonic() - started:.1f} s")


def check_workspace_loads(gql: GraphQL, alive: Callable[[], None]) -> None:
    """Wait until the webserver answers GraphQL and has loaded the code location without error."""

    def loaded() -> bool:
        result = gql(WORKSPACE_QUERY)["workspaceOrError"]
        assert result["__typename"] == "Workspace", result
        entries = result["locationEntries"]
        if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
            return False
        errors = [e for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
        if errors:
            pytest.fail(f"code location failed to load: {errors}")
        return True

    wait_for("the webserver and its code location", loaded, STARTUP_TIMEOUT, alive)


def sensor_runs(gql: GraphQL) -> list[dict]:
    """Every run launched by the landing sensor, with tags as a dict."""
    result = gql(RUNS_QUERY, filter={"tags": [{"key": SENSOR_NAME_TAG, "value": SENSOR_NAME}]})["runsOrError"]
    assert result["__typename"] == "Runs", result
    return [{**r, "tags": {t["key"]: t["value"] for t in r["tags"]}} for r in result["results"]]


def check_sensor_runs(
    gql: GraphQL,
    alive: Callable[[], None],
    telemetry: set[str],
    archive: Path,
    landed_at: float,
    budget: Budget,
) -> dict[str, list[dict]]:
    """Wait for the landing sensor to settle after the landing; check Level 0 metadata, outputs and runs.

    Settled: the sensor's Level 0 runs have all finished and the sensor has since completed an
    evaluation, begun after the files had settled and after the last run ended, that requested
    nothing. Every camera must then have a materialization of the partition; each output's
    checksum is compared with its bytes in ``archive``. Returns the materializations of the
    partition per asset (newest first).
    """
    level0_assets = [f"level0_{camera.slug}" for camera in CAMERAS]
    try:
        wait_until_settled(
            gql,
            alive,
            since=landed_at + SETTLE_SECONDS,
            timeout=budget.cap(SENSOR_RUNS_TIMEOUT),
            sensors=[SENSOR_NAME],
            assets=level0_assets,
        )
    except BaseException:
        print("runs:", runs_summary(gql))
        raise
    found = {asset: materializations(gql, asset, PARTITION) for asset in level0_assets}
    assert all(found.values()), {asset: len(events) for asset, events in found.items()}

    launched = sensor_runs(gql)
    assert launched and all(r["status"] == "SUCCESS" for r in launched), launched
    for camera in CAMERAS:
        asset = f"level0_{camera.slug}"
        tlm_name = f"PUNCH_TLM_{camera.obs}_{SIMULATION_START:%Y%m%d%H%M%S}.tlm"
        assert tlm_name in telemetry
        events = found[asset]
        assert all(m["partition"] == PARTITION for m in events)
        values = [metadata(m) for m in events]
        assert sum(v["frames_made"] for v in values) > 0, (asset, values)
        for value in values:
            assert value["frames_skipped"] == 0 and value["frames_waiting"] == 0, (asset, value)
            assert value["input_telemetry_files"] == [tlm_name], (asset, value)
            outputs = value["outputs"]
            assert len(outputs) == value["frames_made"] + value["frames_unchanged"], (asset, value)
            for output in outputs:
                assert SHA256.match(output["sha256"]), output
                on_disk = archive / output["path"]
                assert hashlib.sha256(on_disk.read_bytes()).hexdigest() == output["sha256"], output
                assert Path(output["path"]).name.startswith(f"PUNCH_L0_{output['product']}{camera.obs}_"), output
        for run_id in {m["runId"] for m in events}:
            info = run(gql, run_id)
            assert info["status"] == "SUCCESS", info
            assert info["tags"].get(SENSOR_NAME_TAG) == SENSOR_NAME, info
        if len(events) > 1:
            warnings.warn(
                f"{asset} {PARTITION} was materialized by {len(events)} sensor runs "
                f"(frames_made {[v['frames_made'] for v in values]}): the sensor re-requested work in progress",
                stacklevel=1,
            )

        # The sensor reported the downlink as a materialization of the telemetry external asset.
        reported = materializations(gql, f"telemetry_{camera.slug}")
        assert reported, f"no materialization of telemetry_{camera.slug}"
        assert tlm_name in {metadata(m).get("file") for m in reported}, [metadata(m) for m in reported]
    return found


def check_backfill_is_incremental(
    gql: GraphQL, alive: Callable[[], None], before: dict[str, list[dict]], budget: Budget
) -> None:
    """Launch a backfill of two cameras as the UI does; check that it completes and rewrites nothing."""
    assets = ["level0_wfi1", "level0_nfi4"]
    backfill = launch_backfill_and_wait(gql, alive, assets, [PARTITION], budget=budget)
    backfill_id = backfill["id"]
    assert backfill["partitionNames"] == [PARTITION]
    backfill_runs = {r["runId"] for r in backfill["runs"]}

    for asset in assets:
        earlier = before[asset]
        earlier_ids = {m["runId"] for m in earlier}
        new = [m for m in materializations(gql, asset, PARTITION) if m["runId"] not in earlier_ids]
        assert len(new) == 1 and new[0]["runId"] in backfill_runs, (asset, new)
        assert run(gql, new[0]["runId"])["tags"].get(BACKFILL_TAG) == backfill_id
        value = metadata(new[0])
        made_before = sum(metadata(m)["frames_made"] for m in earlier)
        assert value["frames_made"] == 0, (asset, value)
        assert value["frames_unchanged"] == made_before, (asset, value, made_before)
        # Same files, same content: the newest earlier outputs are reported unchanged.
        previous = {(o["path"], o["sha256"]) for o in metadata(earlier[0])["outputs"]}
        assert {(o["path"], o["sha256"]) for o in value["outputs"]} == previous
        assert value["outputs"] and all(o["status"] == "unchanged" for o in value["outputs"]), value


# --------------------------------------------------------------------------------------------
# Level 1: late data carried on by Declarative Automation; calibration staleness and backfill
# --------------------------------------------------------------------------------------------

LEVEL1_CAMERA = CAMERAS[1]  # wfi2
LEVEL1_ASSET = f"level1_early_{LEVEL1_CAMERA.slug}"
LEVEL1_TIMEOUT = 600.0
SETTLE_TIMEOUT = 120.0
#: Every wait of the Level 1 test after start-up (STARTUP_TIMEOUT): below the 1,200 s pytest timeout.
LEVEL1_BUDGET = 1000.0
#: What makes the test camera's frames up to early Level 1, and the sensors that request it.
MAKING = (f"level0_{LEVEL1_CAMERA.slug}", LEVEL1_ASSET)
LEVEL1_SENSORS = (LANDING_SENSOR, AUTOMATION_SENSOR, WAITS_SENSOR)

STALE_QUERY = """
query Stale($assetKey: AssetKeyInput!, $partitions: [String!]) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode { staleStatusByPartition(partitions: $partitions) }
  }
}
"""


@pytest.fixture
def level1_installation(installation: dict[str, Any]) -> dict[str, Any]:
    """Provide the installation with small calibration files, quick automation and a 48-hour replay wait."""
    config_path = Path(installation["env"]["PUNCHPIPE_CONFIG"])
    settings = yaml.safe_load(config_path.read_text())
    settings.update(
        calibration_image_size=SIZE,
        level0={"replay_wait_hours": 48},
        automation={"interval_seconds": SENSOR_INTERVAL, "lookback_days": 3},
    )
    config_path.write_text(yaml.safe_dump(settings))
    return installation


def catalog_level1(env: dict[str, str]) -> dict[str, Any]:
    """Early Level 1 products of the test camera in the installation's catalog: name -> row."""
    from sqlalchemy import select

    from punchpipe_assets.config import load_config
    from punchpipe_assets.resources.catalog import CatalogResource, ProductFile

    config = load_config(env["PUNCHPIPE_CONFIG"], home=env["PUNCHPIPE_HOME"])
    with CatalogResource(url=config.catalog_url).session() as session:
        rows = session.scalars(
            select(ProductFile).where(
                ProductFile.level == "1",
                ProductFile.observatory == LEVEL1_CAMERA.obs,
                ProductFile.file_type.like("X%"),
            )
        ).all()
        return {Path(p.path).name: p for p in rows}


def stale_status(gql: GraphQL, asset: str, partitions: list[str]) -> dict[str, str]:
    """Dagster's staleness of asset partitions, as the UI asks for it."""
    node = gql(STALE_QUERY, assetKey={"path": [asset]}, partitions=partitions)["assetNodeOrError"]
    assert node["__typename"] == "AssetNode", node
    return dict(zip(partitions, node["staleStatusByPartition"], strict=True))


def test_late_replay_reaches_level1_and_calibration_backfill_remakes_only_stale_partition(level1_installation):
    """Check that a replay for a day-old hour flows through Level 0 into Level 1 without a human.

    A new vignetting version makes exactly the partition it changes stale, and a GraphQL backfill of
    it remakes only its frames.
    """
    from datetime import UTC, datetime, timedelta

    from punchpipe_assets.calibration.synthesize import synthesize_calibration

    installation = level1_installation
    env, home, log_dir, tmp = installation["env"], installation["home"], installation["logs"], installation["tmp"]
    hour = (datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=26)).replace(minute=0, second=0, microsecond=0)
    partitions = [f"{hour:%Y-%m-%d-%H:%M}", f"{hour + timedelta(hours=1):%Y-%m-%d-%H:%M}"]
    report = simulate(
        hour + timedelta(minutes=44),
        0.4,
        tmp / "sim",
        size=SIZE,
        seed=3,
        cameras=[LEVEL1_CAMERA],
        gap_fraction=0.2,
        replay=True,
        packet_payload_bytes=1024,
    )
    regular = [p for p in report.files if not p.name.endswith("_replay.tlm")]
    replays = [p for p in report.files if p.name.endswith("_replay.tlm")]
    assert report.dropped_packets and replays, "the simulation must leave images incomplete until the replay"
    science = [when for _, when, code in report.images if code != "DK"]

    budget = Budget(LEVEL1_BUDGET)
    with running_dagster(env, log_dir) as (gql, alive):
        # Calibration first (dated three days earlier), installed by the calibration sensor.
        synthesize_calibration(
            home / "calibration-landing",
            hour - timedelta(days=3),
            file_version="1",
            size=SIZE,
            cameras=[LEVEL1_CAMERA],
        )
        landing = home / "calibration-landing"
        wait_for(
            "the calibration sensor to install the delivery", lambda: not any(landing.iterdir()), budget.cap(120), alive
        )

        # Regular downlinks with lost packets: the incomplete images wait for their replay.
        landed_at = time.time()
        land(regular, home / "landing")
        wait_for(
            "early Level 1 of both hours from the regular downlinks",
            lambda: all(materializations(gql, LEVEL1_ASSET, p) for p in partitions) and catalog_level1(env),
            budget.cap(LEVEL1_TIMEOUT),
            alive,
        )
        # Done with the regular downlinks: no Level 0 or early Level 1 of the camera left to request.
        wait_until_settled(gql, alive, landed_at + SETTLE_SECONDS, budget.cap(SETTLE_TIMEOUT), LEVEL1_SENSORS, MAKING)
        runs_before_replay = {m["runId"] for p in partitions for m in materializations(gql, LEVEL1_ASSET, p)}
        made_before_replay = set(catalog_level1(env))
        assert 0 < len(made_before_replay) < len(science), (len(made_before_replay), len(science))

        # The replay of the day-old hours: Level 0 completes the images, automation carries them on.
        replayed_at = time.time()
        land(replays, home / "landing")
        wait_for(
            "early Level 1 of every replayed image",
            lambda: len(catalog_level1(env)) == len(science),
            budget.cap(LEVEL1_TIMEOUT),
            alive,
        )
        # Automation carries the frames on down the chain (late and quick Level 1, Level 2, Q, 3);
        # what matters here is that no Level 0 or early Level 1 of this camera is left to make.
        wait_until_settled(gql, alive, replayed_at + SETTLE_SECONDS, budget.cap(SETTLE_TIMEOUT), LEVEL1_SENSORS, MAKING)
        products = catalog_level1(env)
        assert set(products) >= made_before_replay
        assert {p.partition_key for p in products.values()} == set(partitions)
        events = [m for p in partitions for m in materializations(gql, LEVEL1_ASSET, p)]
        level1_runs = {m["runId"]: run(gql, m["runId"]) for m in events}
        for info in level1_runs.values():  # launched by the daemon's automation, never by a person
            assert info["tags"].get("dagster/priority") == "5", info
        # Every frame the replay completed was written by a run created after the replay landed.
        replay_runs = {r["runId"] for r in runs(gql, createdAfter=replayed_at) if r["runId"] in level1_runs}
        assert replay_runs and not replay_runs & runs_before_replay, (replay_runs, runs_before_replay)
        written_by_replay = {
            Path(o["path"]).name for m in events if m["runId"] in replay_runs for o in metadata(m)["outputs"]
        }
        assert set(products) - made_before_replay <= written_by_replay, set(products) - made_before_replay
        assert stale_status(gql, LEVEL1_ASSET, partitions) == dict.fromkeys(partitions, "FRESH")

        # A new vignetting version (GM v2) dated at the start of the second hour.
        before = {name: (p.sha256, (home / "archive" / p.path).stat().st_mtime_ns) for name, p in products.items()}
        later_xm = {n for n, p in products.items() if p.file_type == "XM" and p.partition_key == partitions[1]}
        assert later_xm
        staging = tmp / "calibration-v2"
        delivered_at = time.time()
        for path in synthesize_calibration(
            staging,
            hour + timedelta(hours=1),
            file_version="2",
            size=SIZE,
            cameras=[LEVEL1_CAMERA],
            kinds=["vignetting"],
        ):
            if path.name.startswith("PUNCH_L1_GM"):
                shutil.move(path, home / "calibration-landing" / path.name)
        expected = {partitions[0]: "FRESH", partitions[1]: "STALE"}
        wait_for(
            "the second hour to become stale",
            lambda: stale_status(gql, LEVEL1_ASSET, partitions) == expected,
            budget.cap(120),
            alive,
        )
        made_before = {m["runId"] for m in materializations(gql, LEVEL1_ASSET, partitions[1])}
        # Automation ignores calibration: an evaluation begun once the new version was stored (and so
        # the hour stale) completed, and no evaluation since the delivery requested the camera's early
        # Level 1; it is still stale.
        wait_for_evaluation(gql, alive, AUTOMATION_SENSOR, time.time(), budget.cap(120))
        evaluations = sensor_ticks(gql, delivered_at)[AUTOMATION_SENSOR]
        requested = {a for t in evaluations for a in t["requested"]}
        assert LEVEL1_ASSET not in requested, requested
        assert not [r for r in runs(gql, createdAfter=delivered_at) if LEVEL1_ASSET in r["assets"]]
        assert stale_status(gql, LEVEL1_ASSET, partitions) == expected
        assert {m["runId"] for m in materializations(gql, LEVEL1_ASSET, partitions[1])} == made_before

        # An operator's reprocessing marked urgent in the backfill dialog's tags: without the tag it
        # runs behind the automation runs still carrying the chain on (backfills have priority 0).
        backfill = launch_backfill_and_wait(
            gql, alive, [LEVEL1_ASSET], [partitions[1]], tags={"dagster/priority": "10"}, budget=budget
        )
        new = [
            m
            for m in materializations(gql, LEVEL1_ASSET, partitions[1])
            if m["runId"] in {r["runId"] for r in backfill["runs"]}
        ]
        assert len(new) == 1, new
        value = metadata(new[0])
        assert value["frames_made"] == len(later_xm) and value["frames_failed"] == 0, value
        after = catalog_level1(env)
        rewritten = {n for n, p in after.items() if (home / "archive" / p.path).stat().st_mtime_ns != before[n][1]}
        assert rewritten == later_xm
        assert stale_status(gql, LEVEL1_ASSET, partitions) == dict.fromkeys(partitions, "FRESH")


def launch_backfill_and_wait(
    gql: GraphQL,
    alive: Callable[[], None],
    assets: list[str],
    partitions: list[str],
    tags: dict[str, str] | None = None,
    budget: Budget | None = None,
) -> dict:
    """Launch a backfill as the UI does (with the dialog's tags) and wait until it completes successfully."""
    params: dict = {"partitionNames": partitions, "assetSelection": [{"path": [a]} for a in assets]}
    if tags:
        params["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
    launched = gql(LAUNCH_BACKFILL_MUTATION, backfillParams=params)["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    terminal = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

    def finished() -> dict | None:
        backfill = gql(BACKFILL_QUERY, backfillId=backfill_id)["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        return backfill if backfill["status"] in terminal else None

    try:
        timeout = budget.cap(BACKFILL_TIMEOUT) if budget is not None else BACKFILL_TIMEOUT
        backfill = wait_for(f"backfill {backfill_id}", finished, timeout, alive)
    except BaseException:
        print("runs:", runs_summary(gql))
        raise
    assert backfill["status"] in ("COMPLETED_SUCCESS", "COMPLETED"), backfill
    assert backfill["error"] is None, backfill
    assert backfill["runs"] and all(r["status"] == "SUCCESS" for r in backfill["runs"]), backfill
    return backfill
