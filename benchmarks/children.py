"""What the benchmarks share: each side runs in a fresh interpreter, measured from outside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_child(script: Path, name: str, *args: str) -> dict:
    """Run ``script --child NAME ARGS`` in a fresh interpreter from the repository's root.

    Returns the child's result (the JSON of its last output line) with its wall seconds
    (``process_s``) and peak RSS (``maxrss_mb``, ``ru_maxrss`` from ``wait4``).
    """
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(script), "--child", name, *args],
        cwd=script.parents[1],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"child {name} failed with status {status}")
    result = json.loads(output.decode().strip().splitlines()[-1])
    return {**result, "process_s": time.perf_counter() - started, "maxrss_mb": usage.ru_maxrss / 1024}
