"""One writer at a time: ``process`` and ``backfill`` hold a lock per home and give way to a daemon.

Two ``punchpipe process`` on one home would drive the same sensors and automation and run the
same partitions twice; ``process`` beside a running ``dagster-daemon`` would do the daemon's work
a second time. So each command holds an exclusive lock on ``$PUNCHPIPE_HOME/punchpipe-writer.lock``
(``filelock``: an OS lock, released by the kernel if the holder dies) with a note of who holds it,
and refuses to start while the instance shows a live daemon heartbeat.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from filelock import FileLock, Timeout

from punchpipe_assets.config import PipelineConfig

#: A daemon heartbeat younger than this means a daemon is running on the instance.
DAEMON_ALIVE_SECONDS = 60.0


class PipelineBusy(RuntimeError):
    """Another writer (a ``process``, a ``backfill`` or a daemon) is working on this installation."""


def writer_lock_path(config: PipelineConfig) -> Path:
    """Return the path of the home's writer lock."""
    return Path(config.home) / "punchpipe-writer.lock"


def _holder_path(config: PipelineConfig) -> Path:
    return writer_lock_path(config).with_suffix(".holder.json")


def lock_holder(config: PipelineConfig) -> dict | None:
    """Return who holds the writer lock (``pid``, ``host``, ``command``, ``since``), if anyone says so."""
    try:
        return json.loads(_holder_path(config).read_text())
    except (OSError, ValueError):
        return None


def live_daemon(instance: dg.DagsterInstance, now: float | None = None) -> str | None:
    """Return a description of a daemon whose heartbeat is recent on this instance, else None."""
    now = time.time() if now is None else now
    for daemon_type, heartbeat in instance.get_daemon_heartbeats().items():
        age = now - heartbeat.timestamp
        if age < DAEMON_ALIVE_SECONDS:
            return f"{daemon_type} (last heartbeat {age:.0f} s ago)"
    return None


def refuse_beside_daemon(instance: dg.DagsterInstance, command: str) -> None:
    """Raise ``PipelineBusy`` if a daemon's heartbeat on the instance is recent."""
    if daemon := live_daemon(instance):
        raise PipelineBusy(
            f"a dagster-daemon runs on this instance ({daemon}): it already does what {command} would; "
            "watch it in the UI, or stop it first"
        )


@contextmanager
def exclusive_writer(config: PipelineConfig, command: str, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the home's writer lock while the block runs.

    Parameters
    ----------
    config
        The installation (its home holds the lock).
    command
        What the holder does, for the message another writer gets (``process``, ``backfill``).
    wait_seconds
        How long to wait for another holder to finish (0: refuse at once).

    Raises
    ------
    PipelineBusy
        With who holds the lock.

    """
    path = writer_lock_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=wait_seconds)
    except Timeout:
        holder = lock_holder(config) or {}
        raise PipelineBusy(
            f"{config.home} is busy: {holder.get('command', 'another punchpipe command')} "
            f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}) "
            "holds its writer lock; wait for it (--wait SECONDS) or stop it"
        ) from None
    try:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _holder_path(config).write_text(json.dumps(holder))
        yield
    finally:
        _holder_path(config).unlink(missing_ok=True)
        lock.release()


#: Run tag naming the ``punchpipe`` process that executed a run in-process (``host:pid``).
EXECUTED_BY_TAG = "punchpipe/executed_by"
_UNFINISHED = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.NOT_STARTED)


def this_process() -> str:
    """Return ``host:pid`` of this process, as ``EXECUTED_BY_TAG`` records it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed, with the reason, the runs a ``punchpipe`` process on this host left unfinished.

    Called while holding the writer lock: a run tagged by another process of this host that is no
    longer alive (killed, out of memory, power lost) can never finish. Returns their run ids.
    """
    host = socket.gethostname()
    orphaned = []
    for run in instance.get_runs(dg.RunsFilter(statuses=list(_UNFINISHED))):
        executor = run.tags.get(EXECUTED_BY_TAG, "")
        run_host, _, pid = executor.rpartition(":")
        if run_host != host or not pid.isdigit() or executor == this_process() or _alive(int(pid)):
            continue
        instance.report_run_failed(
            run, f"orphaned: the punchpipe process that executed it ({executor}) ended before the run finished"
        )
        orphaned.append(run.run_id)
    return orphaned


def sweep_staging(archive_root: Path) -> list[Path]:
    """Remove the staging folders of interrupted writes under the archive (only while holding the lock)."""
    removed = []
    for staging in sorted(Path(archive_root).rglob(".staging-*")):
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed
