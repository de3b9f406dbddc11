"""Benchmark of the Celery execution: one warm worker against two, and warm workers against in-process.

Usage::

    .venv/bin/python benchmarks/bench_celery.py [--hours 0.25] [--size 128] [--sides inprocess,celery1,celery2]

The same work on every side: simulated telemetry of all four cameras for ``--hours`` ending now
and a calibration set (no bootstrap models), made as far as they allow (Level 0, early Level 1 and
what the automation can make from them) by ``punchpipe process`` (``runner.run_process``: the
daemon's own sensor and automation loops, runs one after the other) into a copy of the same
prepared home, each side in its own fresh subprocess, one after the other:

  inprocess: ``execution.mode: in_process``, every step executed in the ``process`` interpreter.
  celery1:   ``execution.mode: celery``, a redis-server of its own on a free loopback port and one
             warm ``punchpipe worker`` on every queue (one process, one step at a time), started
             and ready before the clock starts.
  celery2:   the same with two such workers.

Printed per side: runs, steps, wall and CPU seconds (the driver's and the workers' pool and main
processes' CPU spent during the run), the median step (Dagster's STEP_START to STEP_SUCCESS), the
processes that executed steps, and the peak RSS of each worker's main and pool process. Then the
throughput ratio celery2/celery1, the per-step overhead of Celery against in-process ((wall of
celery1 - wall of inprocess) / steps: both execute one step at a time), and whether every side
stored the same products (catalog checksums, and the stored data where checksums differ).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from datetime import timedelta
from pathlib import Path

from children import run_child

os.environ.setdefault("PREFECT_HOME", "/tmp/punchpipe-prefect-home")
warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
#: The pools' queues and Celery's default queue `dagster` (steps outside the pools: the CTM movie).
QUEUES = "punchbowl,punchbowl_large_memory,dagster"
WORKER_READY_TIMEOUT_S = 300.0


def _config(home: Path, size: int, mode: str = "in_process"):
    from punchpipe_assets.config import immediate_config

    config = immediate_config(home)
    config.calibration_image_size = size
    config.run_log_level = "WARNING"
    config.execution.mode = mode
    return config


def child_prepare(home: Path, hours: float, size: int) -> dict:
    """Telemetry ending now and a calibration set dated a day before it."""
    from punchpipe_assets.calibration.synthesize import synthesize_calibration
    from punchpipe_assets.resources.catalog import utcnow
    from punchpipe_assets.simulate import simulate

    config = _config(home, size)
    end = utcnow().replace(microsecond=0)
    report = simulate(end - timedelta(hours=hours), hours, Path(config.landing_dir), size=size, seed=0)
    calibration = synthesize_calibration(
        Path(config.calibration_landing_dir), end - timedelta(hours=hours, days=1), size=size
    )
    return {"telemetry_files": len(report.files), "images": len(report.images), "calibration_files": len(calibration)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WorkerSampler:
    """Samples the resident set size of each worker's main and pool processes every 200 ms."""

    def __init__(self, workers: list[subprocess.Popen]) -> None:
        import psutil

        self.processes = [psutil.Process(w.pid) for w in workers]
        self.peak = [{"main_mb": 0.0, "pool_mb": 0.0} for _ in workers]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for process, peak in zip(self.processes, self.peak, strict=True):
                try:
                    peak["main_mb"] = max(peak["main_mb"], process.memory_info().rss / 2**20)
                    for child in process.children(recursive=True):
                        peak["pool_mb"] = max(peak["pool_mb"], child.memory_info().rss / 2**20)
                except psutil.Error:
                    pass
            time.sleep(0.2)

    def cpu_s(self) -> float:
        """CPU seconds so far of every worker's main and live pool processes."""
        total = 0.0
        for process in self.processes:
            for p in (process, *process.children(recursive=True)):
                times = p.cpu_times()
                total += times.user + times.system
        return total

    def __enter__(self) -> WorkerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _start_workers(home: Path, count: int, env: dict) -> list[subprocess.Popen]:
    """Start ``count`` ``punchpipe worker`` processes and wait until each says it is ready."""
    workers = []
    for index in range(count):
        log = (home / f"worker{index}.log").open("w")
        workers.append(
            subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "punchpipe"),
                    "worker",
                    "--queues",
                    QUEUES,
                    "--name",
                    f"w{index}@bench",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    for index, worker in enumerate(workers):
        while "ready." not in (home / f"worker{index}.log").read_text():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker {index} never became ready: see {home / f'worker{index}.log'}")
            time.sleep(0.5)
    return workers


def _steps(instance) -> list[dict]:
    """Every step of the instance's runs: key, seconds from start to success, executing pid."""
    import dagster as dg

    starts = {}
    for record in instance.get_event_records(dg.EventRecordsFilter(dg.DagsterEventType.STEP_START), limit=100_000):
        entry = record.event_log_entry
        starts[(entry.run_id, entry.step_key)] = (record.timestamp, entry.dagster_event.pid)
    steps = []
    for record in instance.get_event_records(dg.EventRecordsFilter(dg.DagsterEventType.STEP_SUCCESS), limit=100_000):
        entry = record.event_log_entry
        begin, pid = starts.get((entry.run_id, entry.step_key), (None, None))
        if begin is not None:
            steps.append({"step": entry.step_key, "start": begin, "s": record.timestamp - begin, "pid": pid})
    return sorted(steps, key=lambda s: s["start"])


def child_side(home: Path, size: int, workers: int) -> dict:
    """``run_process`` on this home: in-process (``workers`` 0) or with that many warm Celery workers."""
    import yaml

    mode = "celery" if workers else "in_process"
    redis, started = None, []
    if workers:
        port = _free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.environ["PUNCHPIPE_CELERY_BROKER"] = f"redis://127.0.0.1:{port}/0"
        os.environ["PUNCHPIPE_CELERY_BACKEND"] = f"redis://127.0.0.1:{port}/1"
    config = _config(home, size, mode)
    config_path = home / "punchpipe.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    os.environ |= {"PUNCHPIPE_CONFIG": str(config_path), "DAGSTER_HOME": str(home / "dagster")}
    import dagster as dg

    from punchpipe_assets.runner import prepare_environment, run_process

    prepare_environment(config)
    with dg.DagsterInstance.get() as instance:
        instance.get_runs()  # the storages exist before the workers open them
    try:
        if workers:
            started = _start_workers(home, workers, {**os.environ})
        sampler = WorkerSampler(started)
        with sampler, dg.DagsterInstance.get() as instance:
            worker_cpu = sampler.cpu_s()
            cpu, start = time.process_time(), time.perf_counter()
            summary = run_process(config, instance, show_progress=False)
            result = {"run_s": time.perf_counter() - start, "driver_cpu_s": time.process_time() - cpu}
            result["worker_cpu_s"] = sampler.cpu_s() - worker_cpu if workers else 0.0
            steps = _steps(instance)
    finally:
        for worker in started:
            worker.terminate()
        for worker in started:
            worker.wait(60)
        if redis is not None:
            redis.terminate()
            redis.wait(30)
    seconds = [s["s"] for s in steps]
    first_by_pid = {}
    for s in steps:
        first_by_pid.setdefault(s["pid"], s["s"])
    return {
        **result,
        "cpu_s": result["driver_cpu_s"] + result["worker_cpu_s"],
        "runs": summary["runs"],
        "failed_runs": summary["failed_runs"],
        "steps": len(steps),
        "median_step_s": statistics.median(seconds) if seconds else 0.0,
        "step_s_total": sum(seconds),
        "first_step_s_per_pid": list(first_by_pid.values()),
        "pids": len(first_by_pid),
        "worker_peaks": sampler.peak,
        "products": _products(config),
    }


def _products(config) -> dict[str, str]:
    """Each catalogued product (level, code, observatory, time) with its checksum."""
    from sqlalchemy import select

    from punchpipe_assets.resources import CatalogResource
    from punchpipe_assets.resources.catalog import ProductFile

    with CatalogResource(url=config.catalog_url).session() as session:
        rows = session.scalars(select(ProductFile).where(ProductFile.state == "created", ProductFile.level != "T"))
        return {
            f"{r.level} {r.file_type}{r.observatory} {r.date_obs:%Y-%m-%dT%H:%M:%S} {r.path}": r.sha256 for r in rows
        }


def _same_data(a: Path, b: Path) -> bool:
    """Whether two stored files hold the same data (every FITS HDU's data; other files byte for byte)."""
    import numpy as np
    from astropy.io import fits

    if a.suffix != ".fits":
        return a.read_bytes() == b.read_bytes()
    with fits.open(a) as x, fits.open(b) as y:
        if len(x) != len(y):
            return False
        for one, two in zip(x, y, strict=True):
            if one.data is None or two.data is None:
                if (one.data is None) != (two.data is None):
                    return False
                continue
            left, right = np.asarray(one.data), np.asarray(two.data)
            if left.dtype.kind == "f":
                if not np.array_equal(left, right, equal_nan=True):
                    return False
            elif left.tobytes() != right.tobytes():
                return False
    return True


def _compare(base: Path, sides: dict[str, dict]) -> dict:
    """Whether every side catalogued the same products with the same checksums (else the same data)."""
    names = list(sides)
    reference = sides[names[0]]["products"]
    result = {"products": len(reference), "missing": [], "same_checksum": 0, "same_data_only": [], "different": []}
    for name in names[1:]:
        other = sides[name]["products"]
        result["missing"] += [f"{name}: {key}" for key in set(reference) ^ set(other)]
        for key, digest in reference.items():
            if key not in other:
                continue
            if other[key] == digest:
                result["same_checksum"] += 1
                continue
            path = key.split(" ")[-1]
            same = _same_data(base / names[0] / "archive" / path, base / name / "archive" / path)
            result["same_data_only" if same else "different"].append(f"{name}: {key}")
    for field in ("missing", "same_data_only", "different"):
        result[f"{field}_count"] = len(result[field])
        result[field] = result[field][:10]
    return result


def _child(name: str, *args: str) -> dict:
    """Run a child of this benchmark in a fresh interpreter (``children.run_child``)."""
    return run_child(HERE, name, *args)


SIDE_WORKERS = {"inprocess": 0, "celery1": 1, "celery2": 2}


def _report(prepared: dict, sides: dict[str, dict], compared: dict) -> dict:
    print(f"prepared: {prepared}; machine shared with other jobs (os.getloadavg {os.getloadavg()[0]:.1f})")
    print(
        f"{'side':10} {'runs':>4} {'steps':>5} {'wall s':>7} {'cpu s':>7} {'median step s':>13} "
        f"{'step pids':>9} {'driver MB':>9}  worker peak RSS main/pool MB"
    )
    for name, s in sides.items():
        peaks = ", ".join(f"{p['main_mb']:.0f}/{p['pool_mb']:.0f}" for p in s["worker_peaks"]) or "-"
        print(
            f"{name:10} {s['runs']:4d} {s['steps']:5d} {s['run_s']:7.1f} {s['cpu_s']:7.1f} {s['median_step_s']:13.2f} "
            f"{s['pids']:9d} {s['maxrss_mb']:9.0f}  {peaks}"
        )
    summary = {"compared": compared}
    if "celery1" in sides and "celery2" in sides:
        summary["throughput_ratio_2_over_1"] = sides["celery1"]["run_s"] / sides["celery2"]["run_s"]
        print(f"throughput 2 workers / 1 worker: {summary['throughput_ratio_2_over_1']:.2f} (aim 1.5)")
    if "celery1" in sides and "inprocess" in sides:
        one, local = sides["celery1"], sides["inprocess"]
        summary["overhead_s_per_step"] = (one["run_s"] - local["run_s"]) / max(one["steps"], 1)
        summary["overhead_cpu_s_per_step"] = (one["cpu_s"] - local["cpu_s"]) / max(one["steps"], 1)
        summary["median_step_overhead_s"] = one["median_step_s"] - local["median_step_s"]
        print(
            f"Celery overhead per step against in-process: wall {summary['overhead_s_per_step']:.2f} s, "
            f"cpu {summary['overhead_cpu_s_per_step']:.2f} s, median step {summary['median_step_overhead_s']:+.2f} s "
            "(aim under 2 s)"
        )
        summary["seconds_per_step"] = {n: s["run_s"] / max(s["steps"], 1) for n, s in sides.items()}
    for name, s in sides.items():
        if s["worker_peaks"]:
            print(f"{name}: first step of each worker process {[round(x, 2) for x in s['first_step_s_per_pid']]} s")
    levels: dict[str, int] = {}
    for key in next(iter(sides.values()))["products"]:
        levels[key[0]] = levels.get(key[0], 0) + 1
    counts = {k: v for k, v in compared.items() if k == "products" or k.endswith(("_count", "checksum"))}
    print(f"products by level: {levels}; compared: {counts}; different: {compared['different']}")
    summary["products_by_level"] = levels
    return summary


def main() -> None:
    """Run the Celery benchmark (or, with ``--child``, one of its sides) and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--sides", default="inprocess,celery1,celery2")
    parser.add_argument("--json", dest="json_path", default=None, help="Also write the results to this file.")
    parser.add_argument("--child", default=None)
    parser.add_argument("args", nargs="*")
    options = parser.parse_args()
    if options.child:
        args = [Path(a) if "/" in a else float(a) if "." in a else int(a) for a in options.args]
        function = child_prepare if options.child == "prepare" else child_side
        print(json.dumps(function(*args), default=str))
        return
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp:
        base = Path(tmp)
        prepared = _child("prepare", str(base / "prepared"), str(options.hours), str(options.size))
        sides = {}
        for name in options.sides.split(","):
            shutil.copytree(base / "prepared", base / name)
            sides[name] = _child("side", str(base / name), str(options.size), str(SIDE_WORKERS[name]))
            if options.json_path:  # kept even if a later side or the comparison fails
                Path(options.json_path).with_suffix(f".{name}.json").write_text(json.dumps(sides[name], indent=1))
        compared = _compare(base, sides)
        summary = _report(prepared, sides, compared)
    if options.json_path:
        for side in sides.values():
            side.pop("products")
        Path(options.json_path).write_text(
            json.dumps({"options": vars(options), "prepared": prepared, "sides": sides, **summary}, indent=1)
        )


if __name__ == "__main__":
    main()
