"""``punchpipe ui``: the Dagster webserver and daemon on this installation, kept running.

Dagster's current commands (``dagster-webserver`` and ``dagster-daemon run``, not the superseded
``dagster dev``) load the workspace as ``workspace.yaml`` names it (code location ``punchpipe``),
from a copy written into ``DAGSTER_HOME`` so that it works wherever the package is installed.
A process that dies is started again (with a growing pause), and SIGTERM or Ctrl-C stops both
cleanly. Both load the configuration the command loaded: its ``--config`` file, else
``$PUNCHPIPE_CONFIG`` (made absolute), else ``$PUNCHPIPE_HOME/punchpipe.yaml``. This is for one
operator's machine; production runs the two under systemd (``deploy/systemd/``), which restarts
them the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from punchpipe_assets.runner import CONFIG_ENV, console

#: The code location as ``workspace.yaml`` at the repository's root names it.
WORKSPACE = """load_from:
  - python_module:
      module_name: punchpipe_assets.definitions
      location_name: punchpipe
"""
#: Pause before restarting a process that died: doubles from 1 s up to this.
MAX_RESTART_PAUSE_S = 30.0
#: A process that ran this long before dying is restarted after the shortest pause again.
HEALTHY_AFTER_S = 60.0


def write_workspace(dagster_home: Path) -> Path:
    """Write the workspace file of the code location into ``dagster_home`` and return its path."""
    path = Path(dagster_home) / "workspace.yaml"
    if not path.exists() or path.read_text() != WORKSPACE:
        path.write_text(WORKSPACE)
    return path


def dagster_command(name: str) -> str:
    """Return the path of a Dagster console script of this environment (``dagster-webserver``...)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def child_environment(config_file: str | os.PathLike | None, environ: Mapping[str, str] | None = None) -> dict:
    """Return the environment of a child process that loads the code location with this command's configuration.

    Parameters
    ----------
    config_file
        The command line's ``--config`` file, if any: it takes the place of ``$PUNCHPIPE_CONFIG``.
    environ
        The environment to start from (default: this process's).

    """
    env = dict(os.environ if environ is None else environ)
    chosen = config_file or env.get(CONFIG_ENV)
    if chosen:
        env[CONFIG_ENV] = str(Path(chosen).resolve())
    return env


class Supervised:
    """One supervised process: started in its own process group, restarted when it dies."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> None:
        self.name, self.args, self.env = name, args, env
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.pause = 1.0
        self.restart_at: float | None = None

    def start(self) -> None:
        """Start the process and say so with its pid."""
        self.process = subprocess.Popen(self.args, start_new_session=True, stdin=subprocess.DEVNULL, env=self.env)
        self.started, self.restart_at = time.monotonic(), None
        console.print(f"{self.name} started (pid {self.process.pid})")

    def check(self) -> None:
        """Restart the process if it died and its pause is over."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        code = self.process.poll() if self.process else None
        if code is None:
            return
        self.pause = 1.0 if now - self.started >= HEALTHY_AFTER_S else min(self.pause * 2, MAX_RESTART_PAUSE_S)
        console.print(f"{self.name} (pid {self.process.pid}) exited with status {code}: restarting in {self.pause:g} s")
        _stop_group(self.process)
        self.restart_at = now + self.pause

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``grace`` seconds."""
        if self.process is not None:
            _stop_group(self.process, grace)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """Stop a process and its children (code servers, run workers), which share its group.

    The group's leader often exits before its children (a code server finishing its shutdown):
    this waits for the whole group, not the leader alone, before SIGKILL of what is left.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            process.poll()  # reap the leader, or the group stays alive as its zombie
            if not _group_alive(process.pid):
                break
            time.sleep(0.2)
        else:
            continue
        break
    process.poll()


def run_ui(dagster_home: Path, host: str, port: int, config_file: str | os.PathLike | None = None) -> int:
    """Run the webserver and the daemon until SIGTERM or SIGINT; return the exit status (0).

    ``config_file`` (the command line's ``--config``) is the configuration both load.
    """
    workspace = str(write_workspace(dagster_home))
    env = child_environment(config_file)
    processes = [
        Supervised("dagster-daemon", [dagster_command("dagster-daemon"), "run", "-w", workspace], env),
        Supervised(
            "dagster-webserver",
            [dagster_command("dagster-webserver"), "-w", workspace, "-h", host, "-p", str(port)],
            env,
        ),
    ]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    for process in processes:
        process.start()
    console.print(f"Dagster UI on http://{host}:{port} (code location punchpipe); stop with Ctrl-C or SIGTERM")
    while not stop.wait(1.0):
        for process in processes:
            process.check()
    console.print("stopping the webserver and the daemon")
    for process in processes:
        process.stop()
    return 0
