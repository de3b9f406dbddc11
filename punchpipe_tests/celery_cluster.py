"""A real Celery set-up for tests: a private redis-server and ``punchpipe worker`` processes.

The broker listens on its own free loopback port (never the shared Redis on 6379); the
installation's configuration selects ``execution: celery`` with that broker.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from punchpipe_assets.config import PipelineConfig
from punchpipe_tests.network import free_port
from punchpipe_tests.test_guard import installation

PUNCHPIPE = Path(sys.executable).parent / "punchpipe"


@contextmanager
def redis_broker() -> Iterator[int]:
    """Run a throw-away redis-server on a free loopback port (no persistence); yield the port."""
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        redis.terminate()
        redis.wait(30)


@contextmanager
def celery_installation(tmp_path: Path) -> Iterator[tuple[PipelineConfig, dict[str, str]]]:
    """Yield an installation (configuration, environment) whose execution is Celery on its own broker."""
    with redis_broker() as port:
        config, env = installation(tmp_path)
        env |= {
            "PUNCHPIPE_EXECUTION": "celery",
            "PUNCHPIPE_CELERY_BROKER": f"redis://127.0.0.1:{port}/0",
            "PUNCHPIPE_CELERY_BACKEND": f"redis://127.0.0.1:{port}/1",
        }
        config_path = Path(env["PUNCHPIPE_CONFIG"])
        data = yaml.safe_load(config_path.read_text())
        config_path.write_text(yaml.safe_dump(data | {"execution": {"mode": "celery"}}))
        yield config, env


@contextmanager
def celery_worker(env: dict[str, str], log_path: Path, queues: str = "punchbowl") -> Iterator[subprocess.Popen]:
    """Start ``punchpipe worker --queues QUEUES``, wait until it is ready, stop it on exit."""
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [str(PUNCHPIPE), "worker", "--queues", queues], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 180
        while "ready." not in log_path.read_text():
            assert worker.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the worker never became ready"
            time.sleep(1)
        yield worker
    finally:
        worker.terminate()
        worker.wait(60)
