"""Running punchbowl offline: no IERS downloads, writable Prefect and numba folders.

punchbowl 0.0.25 imports Prefect (never contacted outside a Prefect run, but it creates
``PREFECT_HOME`` on import) and numba (whose caches default to the package folder); astropy would
download IERS tables for dates outside its bundled ones. The package configures astropy when it
is imported (every process that loads the code location); the command line also places the
Prefect and numba folders under the installation's home.
"""

import os
from pathlib import Path


def configure_astropy_offline() -> None:
    """Never download IERS tables; dates outside the bundled tables only warn (punchbowl's advice)."""
    from astropy.utils import iers

    iers.conf.auto_download = False
    iers.conf.auto_max_age = None
    iers.conf.iers_degraded_accuracy = "warn"


def configure_offline(home: str | os.PathLike) -> None:
    """Astropy offline, and Prefect's and numba's folders under ``home`` unless already set."""
    configure_astropy_offline()
    os.environ.setdefault("PREFECT_HOME", str(Path(home) / "prefect"))
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(home) / "numba-cache"))
