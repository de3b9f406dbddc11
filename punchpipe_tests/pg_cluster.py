"""A private PostgreSQL cluster for the outage tests: its own data folder and loopback port.

The tests stop and restart it at will, which they must never do to the shared server. Debian's
PostgreSQL 15 binaries run as the ``postgres`` user (``initdb`` and ``postgres`` refuse root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, text

from punchpipe_tests.network import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"


def available() -> bool:
    """Return whether a private cluster can be made here (binaries and the ``postgres`` user)."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return (BIN / "initdb").exists() and (os.geteuid() != 0 or shutil.which("setpriv") is not None)


class PostgresCluster:
    """A PostgreSQL cluster in a temporary folder, listening on 127.0.0.1 only (trust authentication)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="punchpipe-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        account = pwd.getpwnam(USER)
        os.chown(self.root, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync", "-E", "UTF8")

    def _run(self, program: str, *args: str) -> None:
        as_user = [] if os.geteuid() != 0 else ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups"]
        subprocess.run([*as_user, str(BIN / program), *args], check=True, capture_output=True, cwd=self.root)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", options)

    def stop(self) -> None:
        """Stop the server now (``fast``: open connections are cut, as a crash or fail-over cuts them)."""
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))

    def url(self, database: str = "postgres") -> str:
        """Return the SQLAlchemy URL of a database of the cluster."""
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create a database and return its URL."""
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def remove(self) -> None:
        """Stop the server if it runs and delete its folder."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data))
        shutil.rmtree(self.root, ignore_errors=True)
