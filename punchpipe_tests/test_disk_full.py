"""Fault matrix: the disk fills in the middle of ``punchpipe process``.

Home (catalog, archive) and Dagster's storage live on a small tmpfs of their own; once a run has
started, the test takes every free byte. ``process`` must say "no space left on device" (not
SQLite's ``disk I/O error``) and leave nothing half-written; once space is freed, the next
``process`` makes every product, each on disk with its catalogued checksum, and no run stays started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from punchpipe_assets.diskspace import DISK_FULL_EXIT_STATUS
from punchpipe_assets.runner import INSTANCE_TEMPLATE
from punchpipe_assets.simulate import simulate
from punchpipe_tests.archive_checks import assert_level0_made_once
from punchpipe_tests.conftest import SIMULATION_START
from punchpipe_tests.test_guard import installation, punchpipe

TMPFS_SIZE = "64m"


@pytest.fixture
def small_disk(tmp_path: Path):
    """Mount a tmpfs of ``TMPFS_SIZE`` (needs root and mount permission); unmount after the test."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of the disk with one file; return it."""
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        free = shutil.disk_usage(disk).free
        os.posix_fallocate(handle.fileno(), 0, free)
    with open(disk / "filler-tail", "wb") as handle:  # the last blocks, if fallocate left any
        try:
            handle.write(b"\0" * shutil.disk_usage(disk).free)
        except OSError:
            pass
    return filler


def test_a_full_disk_mid_run_is_reported_as_such_and_the_next_run_completes_the_work(tmp_path, small_disk):
    config, env = installation(small_disk)
    report = simulate(SIMULATION_START, 0.1, tmp_path / "sim", size=64, seed=4)
    config.make_dirs()
    for path in report.files:
        shutil.copy(path, config.landing_dir / path.name)
    (small_disk / "dagster").mkdir(exist_ok=True)
    shutil.copy(INSTANCE_TEMPLATE, small_disk / "dagster" / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(small_disk / "dagster")) as instance:
        instance.get_runs()  # the storages exist before the test polls them beside the process

    full = punchpipe(env, "process", "--quiet")
    deadline = time.monotonic() + 300
    started: list = []
    while not started:
        assert full.poll() is None, full.communicate()[0]
        assert time.monotonic() < deadline, "no run started"
        with dg.DagsterInstance.from_config(str(small_disk / "dagster")) as instance:
            started = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        time.sleep(0.2)
    filler = fill(small_disk)
    output, _ = full.communicate(timeout=600)
    (tmp_path / "process-on-a-full-disk.log").write_text(output)
    assert full.returncode == DISK_FULL_EXIT_STATUS, output
    assert "no space left on device" in output and str(small_disk) in output, output
    assert "disk I/O error" not in output.splitlines()[-1], output
    assert not list(config.archive_dir.rglob(".staging-*")), "a half-written product was left"

    filler.unlink()
    (small_disk / "filler-tail").unlink()
    again = punchpipe(env, "process", "--quiet")
    output, _ = again.communicate(timeout=900)
    assert again.returncode == 0, output
    assert_level0_made_once(config, len(report.images))
    with dg.DagsterInstance.from_config(str(small_disk / "dagster")) as instance:
        unfinished = instance.get_runs(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
        )
        assert unfinished == []
