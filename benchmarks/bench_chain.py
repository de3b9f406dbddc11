"""Benchmark of the whole chain, Level 0 to Level 2 and QuickPUNCH, through Dagster against a plain loop.

Usage::

    .venv/bin/python benchmarks/bench_chain.py [--hours 1.0] [--size 256] [--no-ratio] [--no-latency]

One simulated hour (ending now) of all four cameras, made twice, each side in its own fresh
subprocess, one after the other:

  dagster: ``punchpipe process`` (``runner.run_process``) on a fresh embedded instance: the
           daemon's own sensor, automation and backfill loops, runs executed in that process.
  plain:   the same work without Dagster: telemetry registered and Level 0 formed by the same
           code (``scan_landing``, ``Level0Former``), calibration installed by the same code, then
           the same punchbowl calls on the same frames, level by level (early, late and quick
           Level 1, Level 2 mosaics, CQM, CTM, QAM), written with the same writer; what each call
           takes (frames, calibration files, models, despike neighbours) is read from the Dagster
           side's catalog, so both sides make the same products.

Printed: products per side, wall and CPU seconds, the ratio Dagster/plain (target 1.10 or less),
peak RSS of each side, and the slowest steps of the Dagster side with their peak RSS (sampled from
``/proc`` every 50 ms within each step's time window). With ``--latency``, a third measurement: a
real ``dagster-daemon`` on a fresh embedded home, one more downlink file landed, and the seconds
from landing to the QuickPUNCH CTM of its frames, against the compute seconds of the runs on the
way (target: compute plus at most 60 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from datetime import datetime, timedelta
from pathlib import Path

from children import run_child

os.environ.setdefault("PREFECT_HOME", "/tmp/punchpipe-prefect-home")
warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


class RssSampler:
    """Samples this process's resident set size (with its children) every 50 ms."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss_kb(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as handle:
                return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return 0

    def _run(self) -> None:
        pid = os.getpid()
        while not self._stop.is_set():
            children = []
            try:
                children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                pass
            self.samples.append((time.time(), self._rss_kb(pid) + sum(self._rss_kb(c) for c in children)))
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self, start: float = 0.0, end: float = float("inf")) -> float:
        """Return the peak resident set size in MB sampled between ``start`` and ``end`` (epoch seconds)."""
        values = [kb for when, kb in self.samples if start <= when <= end]
        return max(values, default=0) / 1024


def _config(home: Path, size: int):
    from punchpipe_assets.config import immediate_config

    config = immediate_config(home)
    config.calibration_image_size = size
    config.level2.trefoil_downsample = 1 if size >= 2048 else 8
    config.run_log_level = "WARNING"
    return config


def child_prepare(home: Path, hours: float, size: int) -> dict:
    """Telemetry ending now and a delivery of calibration and bootstrap models."""
    from punchpipe_assets.calibration.bootstrap import synthesize_delivery
    from punchpipe_assets.resources.catalog import utcnow
    from punchpipe_assets.simulate import simulate

    config = _config(home, size)
    end = utcnow().replace(microsecond=0)
    report = simulate(end - timedelta(hours=hours), hours, Path(config.landing_dir), size=size, seed=0)
    delivery = synthesize_delivery(
        Path(config.calibration_landing_dir),
        end - timedelta(hours=hours, days=1),
        size,
        config.level2.trefoil_downsample,
    )
    return {"telemetry_files": len(report.files), "calibration_files": len(delivery), "end": end.isoformat()}


def _plan(config) -> list[dict]:
    """Every product of the Dagster side with what its punchbowl call takes, in dependency order."""
    from sqlalchemy import select

    from punchpipe_assets.calibration.kinds import calibration_codes_for, kind_for_code
    from punchpipe_assets.level1.early import Level1EarlyProcessor
    from punchpipe_assets.resources import ArchiveResource, CatalogResource
    from punchpipe_assets.resources.catalog import FileRelationship, ProductFile

    order = {
        ("1", "X"): 0,
        ("1", "P"): 1,
        ("1", "C"): 1,
        ("1", "Q"): 1,
        ("2", "P"): 2,
        ("2", "C"): 2,
        ("Q", "C"): 3,
        ("Q", "Q"): 5,
    }
    plan = []
    archive = ArchiveResource(root=str(config.archive_dir))
    with CatalogResource(url=config.catalog_url).session() as session:
        rows = session.scalars(select(ProductFile).where(ProductFile.state == "created", ProductFile.level != "0"))
        for row in rows:
            if row.file_type in ("XP", "XR") and row.level == "2":
                continue  # layers come with their mosaic
            if not _compared(row.level, row.file_type):
                continue  # Level 3, NFI stray light, the movie: outside the compared chain
            parents = list(
                session.scalars(
                    select(ProductFile)
                    .join(FileRelationship, FileRelationship.parent_id == ProductFile.id)
                    .where(FileRelationship.child_id == row.id)
                )
            )
            step = {"path": row.path, "level": row.level, "code": row.file_type, "date_obs": row.date_obs.isoformat()}
            key = (row.level, row.file_type[0])
            if row.level == "Q" and row.file_type == "CT":
                step["rank"] = 4
            else:
                step["rank"] = order.get(key, 9)
            by_code = sorted(parents, key=lambda p: p.date_obs)
            if row.level == "1" and row.file_type[0] == "X":
                [level0] = [p for p in parents if p.level == "0"]
                arguments = {}
                for code in calibration_codes_for(level0.file_type, level0.observatory).values():
                    files = [p for p in by_code if p.file_type == code]
                    for index, argument in enumerate(kind_for_code(code).flow_arguments):
                        file = files[index] if index < len(files) else None
                        arguments[argument] = (
                            str(Path(file.path).with_suffix(kind_for_code(code).suffix)) if file is not None else None
                        )
                neighbours = Level1EarlyProcessor(session, archive).despike_neighbours(level0)
                step |= {"input": level0.path, "neighbours": [p.path for p in neighbours], "calibration": arguments}
            elif row.level == "1":
                models = [p.path for p in by_code if p.file_type.startswith("S")]
                masks = [p.path for p in parents if p.file_type == "MS"]
                [early] = [p.path for p in parents if p.file_type.startswith("X")]
                step |= {"input": early, "models": models, "mask": masks[0] if masks else None}
            elif row.level == "2":
                frames = sorted(
                    (p for p in parents if p.level == "1" and p.file_type[0] in "PC"),
                    key=lambda p: (p.observatory, p.file_type),
                )
                masks = {p.observatory: p.path for p in parents if p.file_type == "MS"}
                alphas = [p.path for p in parents if p.file_type == "AL"]
                step |= {
                    "inputs": [p.path for p in frames],
                    "masks": [masks.get(p.observatory) for p in frames],
                    "alphas": alphas[0] if alphas else None,
                }
            else:
                inputs = [p for p in by_code if p.file_type in ("QR", "CQ", "CT")]
                step |= {
                    "inputs": [p.path for p in inputs],
                    "models": [p.path for p in by_code if p.file_type == "CF"],
                    "alphas": next((p.path for p in parents if p.file_type == "AL"), None),
                }
            plan.append(step)
    return sorted(plan, key=lambda s: (s["rank"], s["date_obs"], s["path"]))


#: Step keys of the assets outside the compared chain (Level 0 to Level 2 and Q): their step seconds
#: are taken off the Dagster side's time; the run overhead they cause is left in (against Dagster).
OUTSIDE_CHAIN_STEPS = ("level3_", "levelq_ctm_movie", "level1_nfi_stray_light_")


def _compared(level: str, code: str) -> bool:
    """Whether a product is one of the chain's products that the plain loop makes too."""
    return level in ("1", "2") and code[0] in "XPCQ" or level == "Q" and code in ("CQ", "CT", "QA")


def child_dagster(home: Path, size: int) -> dict:
    """``punchpipe process`` on a fresh embedded instance; the plan for the plain side from its catalog."""
    import dagster as dg

    from punchpipe_assets.runner import run_process

    config = _config(home, size)
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance, RssSampler() as sampler:
        cpu, start = time.process_time(), time.perf_counter()
        summary = run_process(config, instance, show_progress=False)
        result = {"run_s": time.perf_counter() - start, "run_cpu_s": time.process_time() - cpu, **summary}
        steps = {}
        for record in instance.get_event_records(dg.EventRecordsFilter(dg.DagsterEventType.STEP_START)):
            steps.setdefault((record.run_id, record.event_log_entry.step_key), [record.timestamp, None])
        for record in instance.get_event_records(dg.EventRecordsFilter(dg.DagsterEventType.STEP_SUCCESS)):
            key = (record.run_id, record.event_log_entry.step_key)
            if key in steps:
                steps[key][1] = record.timestamp
    result["steps"] = sorted(
        (
            {"step": step, "s": end - begin, "peak_mb": sampler.peak_mb(begin, end)}
            for (_, step), (begin, end) in steps.items()
            if end is not None
        ),
        key=lambda s: -s["s"],
    )
    result["peak_mb"] = sampler.peak_mb()
    result["outside_chain_s"] = sum(s["s"] for s in result["steps"] if s["step"].startswith(OUTSIDE_CHAIN_STEPS))
    plan = _plan(config)
    (home / "plan.json").write_text(json.dumps(plan, indent=1))
    result["products"] = len(plan)
    return result


def _run_step(step: dict, archive, config) -> None:
    """One punchbowl call of the plan, written like the pipeline writes it."""
    from punchpipe_assets.level0.metadata import parse_fits_time
    from punchpipe_assets.level1.early import run_early_flow
    from punchpipe_assets.level1.late import run_late_flow
    from punchpipe_assets.level2.mosaics import run_level2_flow
    from punchpipe_assets.levelq.averages import run_qam_flow
    from punchpipe_assets.levelq.ctm import run_quick_ctm_flow
    from punchpipe_assets.levelq.mosaics import run_cqm_flow

    root = archive.absolute
    level, code = step["level"], step["code"]
    if level == "1" and code[0] == "X":
        calibration = {k: (str(root(v)) if v else None) for k, v in step["calibration"].items()}
        cubes = [run_early_flow(str(root(step["input"])), [str(root(p)) for p in step["neighbours"]], calibration)]
    elif level == "1":
        before, after = step["models"]
        cubes = [
            run_late_flow(
                root(step["input"]),
                root(before),
                root(after),
                root(step["mask"]) if step["mask"] else None,
                quick=code == "QR",
            )
        ]
    elif level == "2":
        masks = [str(root(m).with_suffix(".bin")) if m else None for m in step["masks"]]
        cubes = run_level2_flow(
            [root(p) for p in step["inputs"]],
            masks,
            code == "PT",
            config,
            str(root(step["alphas"])) if step["alphas"] else None,
        )
    elif code == "CQ":
        cubes = run_cqm_flow(
            [root(p) for p in step["inputs"]],
            config.level2.trefoil_downsample,
            config.level2.trim_edges_px,
            str(root(step["alphas"])) if step["alphas"] else None,
        )
    elif code == "CT":
        cubes = [run_quick_ctm_flow(root(step["inputs"][0]), *[root(m) for m in step["models"]])]
    else:
        cubes = [run_qam_flow([str(root(p)) for p in step["inputs"]], datetime.fromisoformat(step["date_obs"]))]
    for cube in cubes:
        when = parse_fits_time(cube.meta["DATE-OBS"].value)
        path = archive.product_path(
            level, str(cube.meta["TYPECODE"].value), str(cube.meta["OBSCODE"].value), when, config.level0.file_version
        )
        archive.write_cube(cube, path, skip_stats=False)


def child_plain(home: Path, plan_path: Path, size: int) -> dict:
    """Registration and Level 0 by the same code, then the plan's punchbowl calls in a loop."""
    from punchpipe_assets.cameras import CAMERAS
    from punchpipe_assets.level0.formation import Level0Former
    from punchpipe_assets.resources import ArchiveResource, CatalogResource
    from punchpipe_assets.sensors.calibration import scan_calibration_landing
    from punchpipe_assets.sensors.landing import scan_landing
    from punchpipe_assets.telemetry.packets import load_packet_set

    config = _config(home, size)
    catalog, archive = CatalogResource(url=config.catalog_url), ArchiveResource(root=str(config.archive_dir))
    plan = json.loads(plan_path.read_text())
    with RssSampler() as sampler:
        cpu, start = time.process_time(), time.perf_counter()
        scan = scan_landing(catalog, config, max_files=10**6)
        packet_set = load_packet_set(config.telemetry_definitions)
        for request in scan.requests:
            hour = request.first_hour
            while hour <= request.last_hour:
                for camera in CAMERAS:
                    if camera.obs in request.observatories:
                        with catalog.session() as session:
                            Level0Former(
                                session, archive, config.level0, packet_set, landing_dir=config.landing_dir
                            ).form_window(camera, hour, hour + timedelta(hours=1))
                hour += timedelta(hours=1)
        scan_calibration_landing(catalog, archive, config)
        for step in plan:
            _run_step(step, archive, config)
        result = {"run_s": time.perf_counter() - start, "run_cpu_s": time.process_time() - cpu}
    result["peak_mb"] = sampler.peak_mb()
    result["products"] = len(plan)
    return result


LATENCY_TIMEOUT_S = 1800.0


def _products_in(config, level: str, code: str, start: datetime, end: datetime) -> int:
    """Count catalogued products of a type made from observations in ``[start, end)``."""
    from sqlalchemy import func, select

    from punchpipe_assets.resources import CatalogResource
    from punchpipe_assets.resources.catalog import ProductFile

    with CatalogResource(url=config.catalog_url).session() as session:
        query = select(func.count(ProductFile.id)).where(
            ProductFile.level == level,
            ProductFile.file_type == code,
            ProductFile.state == "created",
            ProductFile.date_obs >= start,
            ProductFile.date_obs < end,
        )
        return session.scalar(query) or 0


def child_latency(home: Path, size: int) -> dict:
    """Time from one downlink landing to its QuickPUNCH CTM under a real ``dagster-daemon``.

    The home first holds a delivery and the telemetry of the previous 45 minutes, made by
    ``punchpipe process``; the daemon then runs on the embedded instance (SQLite, the instance's
    run queue), and the last 15 minutes land as one downlink per camera.
    """
    import dagster as dg
    import yaml

    from punchpipe_assets.calibration.bootstrap import synthesize_delivery
    from punchpipe_assets.resources.catalog import utcnow
    from punchpipe_assets.runner import prepare_environment, run_process
    from punchpipe_assets.simulate import simulate

    config = _config(home, size)
    config.sensor.interval_seconds = 5
    config.automation.interval_seconds = 5
    config_path = home / "punchpipe.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    os.environ["PUNCHPIPE_CONFIG"] = str(config_path)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    prepare_environment(config)
    end = utcnow().replace(microsecond=0)
    split = end - timedelta(minutes=15)
    simulate(end - timedelta(hours=1), 0.75, Path(config.landing_dir), size=size, seed=3)
    synthesize_delivery(
        Path(config.calibration_landing_dir), end - timedelta(days=1), size, config.level2.trefoil_downsample
    )
    latest = simulate(split, 0.25, home / "held-back", size=size, seed=4)
    with dg.DagsterInstance.get() as instance:
        warmup = run_process(config, instance, show_progress=False)
    log = (home / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "punchpipe_assets.definitions"],
        cwd=REPO,
        env={**os.environ},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(30)  # the daemon's first ticks: the automation baseline
        landed = time.time()
        for path in latest.files:
            shutil.copy(path, Path(config.landing_dir) / path.name)
        while _products_in(config, "Q", "CT", split, end) == 0:
            if daemon.poll() is not None or time.time() - landed > LATENCY_TIMEOUT_S:
                raise SystemExit(f"no QuickPUNCH CTM of the landed downlink; see {home / 'daemon.log'}")
            time.sleep(1)
        latency = time.time() - landed
    finally:
        daemon.terminate()
        daemon.wait(60)
        log.close()
    with dg.DagsterInstance.get() as instance:
        runs = [r for r in instance.get_run_records() if r.start_time and r.start_time >= landed]
        compute = sum((r.end_time or time.time()) - r.start_time for r in runs if r.start_time < landed + latency)
    return {
        "latency_s": latency,
        "compute_s": compute,
        "overhead_s": latency - compute,
        "runs": len(runs),
        "warmup_runs": warmup["runs"],
        "landed_files": len(latest.files),
    }


def _compare(dagster_home: Path, plain_home: Path, plan_path: Path) -> dict:
    """Whether both sides stored the same data for every product of the plan."""
    import numpy as np
    from astropy.io import fits

    same, different = 0, []
    for step in json.loads(plan_path.read_text()):
        with (
            fits.open(dagster_home / "archive" / step["path"]) as a,
            fits.open(plain_home / "archive" / step["path"]) as b,
        ):
            if np.array_equal(np.asarray(a[1].data), np.asarray(b[1].data), equal_nan=True):
                same += 1
            else:
                different.append(step["path"])
    return {"identical": same, "different": different[:10]}


def _child(name: str, *args: str) -> dict:
    """Run a child of this benchmark in a fresh interpreter (``children.run_child``)."""
    return run_child(HERE, name, *args)


def main() -> None:
    """Run the chain benchmark (or, with ``--child``, one of its steps) and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ratio", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--child", default=None)
    parser.add_argument("args", nargs="*")
    options = parser.parse_args()
    if options.child:
        functions = {
            "prepare": child_prepare,
            "dagster": child_dagster,
            "plain": child_plain,
            "latency": child_latency,
        }
        args = [Path(a) if "/" in a else float(a) if "." in a else int(a) for a in options.args]
        print(json.dumps(functions[options.child](*args), default=str))
        return
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
        base = Path(tmp)
        if options.ratio:
            _ratio(base, options.hours, options.size)
        if options.latency:
            latency = _child("latency", str(base / "latency"), str(options.size))
            print(
                f"latency landing -> QuickPUNCH CTM under dagster-daemon: {latency['latency_s']:.0f} s, compute of "
                f"the {latency['runs']} runs on the way {latency['compute_s']:.0f} s, overhead "
                f"{latency['overhead_s']:.0f} s (target: at most 60 s); peak RSS {latency['maxrss_mb']:.0f} MB"
            )


def _ratio(base: Path, hours: float, size: int) -> None:
    """Measure the Dagster side and the plain loop one after the other and print the comparison."""
    prepared = _child("prepare", str(base / "prepared"), str(hours), str(size))
    for side in ("dagster", "plain"):
        shutil.copytree(base / "prepared", base / side)
    dagster = _child("dagster", str(base / "dagster"), str(size))
    plain = _child("plain", str(base / "plain"), str(base / "dagster" / "plan.json"), str(size))
    compared = _compare(base / "dagster", base / "plain", base / "dagster" / "plan.json")
    print(f"prepared: {prepared}")
    print(f"{'side':8} {'products':>8} {'run s':>8} {'cpu s':>8} {'process s':>10} {'peak MB':>8}")
    for name, side in (("dagster", dagster), ("plain", plain)):
        print(
            f"{name:8} {side['products']:8d} {side['run_s']:8.1f} {side['run_cpu_s']:8.1f} {side['process_s']:10.1f} "
            f"{side['maxrss_mb']:8.0f}"
        )
    chain_s = dagster["run_s"] - dagster["outside_chain_s"]
    print(
        f"Dagster side also made Level 3, NFI stray light and the movie: {dagster['outside_chain_s']:.1f} s of "
        f"steps, taken off its time: ratio over the compared chain {chain_s / plain['run_s']:.3f} (target 1.10)"
    )
    print(
        f"ratio dagster/plain (whole runs): wall {dagster['run_s'] / plain['run_s']:.3f}, cpu "
        f"{dagster['run_cpu_s'] / plain['run_cpu_s']:.3f}, process {dagster['process_s'] / plain['process_s']:.3f}"
    )
    print(
        f"Dagster runs: {dagster['runs']} ({dagster['failed_runs']} failed), rounds of the daemon loops: "
        f"{dagster['rounds']}"
    )
    print(f"products compared: {compared}")
    print(
        "slowest steps (Dagster side): "
        + ", ".join(f"{s['step']} {s['s']:.0f} s / {s['peak_mb']:.0f} MB" for s in dagster["steps"][:12])
    )


if __name__ == "__main__":
    main()
