"""punchpipe on Dagster: the PUNCH Science Operations Center pipeline as a Dagster code location."""

from punchpipe_assets.offline import configure_astropy_offline

configure_astropy_offline()
