"""``punchpipe ui`` as an operator runs it.

The code location as workspace.yaml names it, a killed daemon started again, SIGTERM stopping
everything cleanly; the children load the command's configuration.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from punchpipe_assets.ui import Supervised, child_environment
from punchpipe_tests.test_cli import embedded
from punchpipe_tests.test_end_to_end import GraphQL, free_port, stop_process_group, wait_for
from punchpipe_tests.test_guard import PUNCHPIPE

LOCATIONS_QUERY = """
query { workspaceOrError { ... on Workspace { locationEntries { name
  locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
DAEMONS_QUERY = """
query { instance { daemonHealth { allDaemonStatuses { daemonType healthy lastHeartbeatTime } } } }
"""
STARTED = re.compile(r"(dagster-daemon|dagster-webserver) started \(pid (\d+)\)")


def started_pids(log: Path) -> list[tuple[str, int]]:
    """Return the (name, pid) of every process ``punchpipe ui`` said it started, in order."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [(name, int(pid)) for name, pid in STARTED.findall(text)]


def group_alive(pid: int) -> bool:
    """Whether any process of the group led by ``pid`` is left."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_supervised_children_load_the_commands_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PUNCHPIPE_CONFIG", "elsewhere.yaml")
    seen = tmp_path / "seen.txt"
    script = f"import os; open({str(seen)!r}, 'w').write(os.environ['PUNCHPIPE_CONFIG'])"
    child = Supervised("child", [sys.executable, "-c", script], child_environment("given.yaml"))
    child.start()
    assert child.process.wait(30) == 0
    assert seen.read_text() == str((tmp_path / "given.yaml").resolve())  # --config, absolute
    assert child_environment(None)["PUNCHPIPE_CONFIG"] == str((tmp_path / "elsewhere.yaml").resolve())


@pytest.mark.e2e
def test_ui_loads_punchpipe_restarts_a_killed_daemon_and_stops_on_sigterm(tmp_path):
    env = embedded(tmp_path / "home")
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "wb") as out:
        ui = subprocess.Popen(
            [str(PUNCHPIPE), "ui", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def alive() -> None:
        assert ui.poll() is None, f"punchpipe ui exited with {ui.returncode}:\n{log.read_text()}"

    try:
        gql = GraphQL(port)

        def location() -> dict | None:
            entries = gql(LOCATIONS_QUERY)["workspaceOrError"]["locationEntries"]
            return entries[0] if entries and entries[0]["locationOrLoadError"] else None

        entry = wait_for("the code location", location, 300, alive)
        assert entry["name"] == "punchpipe", entry  # as workspace.yaml names it
        assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
        assert "SupersessionWarning" not in log.read_text(), log.read_text()

        def sensor_heartbeat_after(moment: float) -> bool:
            statuses = gql(DAEMONS_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
            return any(
                s["daemonType"] == "SENSOR" and s["healthy"] and (s["lastHeartbeatTime"] or 0) > moment
                for s in statuses
            )

        wait_for("a healthy sensor daemon", lambda: sensor_heartbeat_after(0), 300, alive)
        (daemon,) = [pid for name, pid in started_pids(log) if name == "dagster-daemon"]

        os.killpg(daemon, signal.SIGKILL)  # the daemon dies under the UI
        killed = time.time()
        wait_for(
            "the daemon started again",
            lambda: [pid for name, pid in started_pids(log) if name == "dagster-daemon" and pid != daemon],
            120,
            alive,
        )
        assert "exited with status" in log.read_text()
        assert not group_alive(daemon)
        # Heartbeats after the kill can only come from the new daemon.
        wait_for("the restarted daemon's heartbeat", lambda: sensor_heartbeat_after(killed + 1), 300, alive)
        assert location()["name"] == "punchpipe"  # the webserver served on throughout

        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=90) == 0, log.read_text()
        assert "stopping the webserver and the daemon" in log.read_text()
        for _, pid in started_pids(log):
            assert not group_alive(pid), f"process group {pid} outlived punchpipe ui"
    finally:
        stop_process_group(ui)
