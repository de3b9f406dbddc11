"""Level 3 averages: low-noise ``PAM``/``CAM`` (32-minute bins) and velocity maps ``VAM`` (6-hour bins).

``PAM``/``CAM``: the ``PTM``/``CTM`` whose DATE-OBS falls in a 32-minute bin counted from midnight
(a day holds exactly 45), by punchbowl's ``generate_level3_low_noise_flow`` with the bin's centre
as reference time; complete at 8 ``PTM`` or 4 ``CTM`` (the roll cycle), an incomplete bin made
``level3.low_noise.wait_hours`` after its end, flagged. The control segment in service never makes
an incomplete bin without a configured wait and silently drops the oldest bin; here every bin
with an input is made.

``VAM``: the Level 3 ``PTM`` of a 6-hour bin from midnight, by punchbowl's ``track_velocity`` with
the bin's centre as reference time, once at least ``level3.velocity.min_inputs`` exist (fewer:
refused with the reason, tried again when more arrive). ``punchbowl.auto`` cannot make it in 0.0.25
(its flow reads the config key ``L3_VAM`` instead of ``level3_VAM``, its call data holds an ndarray
and a datetime ``json.dumps`` rejects, and ``generate_level3_velocity_flow`` never passes the
required ``reference_time`` to ``track_velocity``): ``run_velocity`` calls ``track_velocity``
directly, the thin wrapper those three breakages leave.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from punchpipe_assets.bins import BinAverager
from punchpipe_assets.grid_models import GridModelBuilder, window_inputs
from punchpipe_assets.resources.catalog import ProductFile

# Bumped whenever the way a PAM/CAM or VAM is made changes; part of its fingerprint.
LEVEL3_LOW_NOISE_CODE_VERSION = "level3-low-noise-v1"
LEVEL3_VAM_CODE_VERSION = "level3-vam-v1"
#: Product code, input code and the count of a complete bin, by polarization.
LOW_NOISE_CODES = {"polarized": ("PA", "PT", 8), "clear": ("CA", "CT", 4)}
VELOCITY_BIN = timedelta(hours=6)


def run_low_noise_flow(paths: list[str], reference_time: datetime):
    """One call of punchbowl's ``generate_level3_low_noise_flow`` (no NFI) with the bin's centre as reference."""
    from punchbowl.level3.flow import generate_level3_low_noise_flow

    [cube] = generate_level3_low_noise_flow(sorted(paths), None, reference_time=reference_time)
    return cube


def run_velocity(paths: list[str], reference_time: datetime, delta_t: int, sparsity: int, n_ofs: int):
    """One call of punchbowl's ``track_velocity`` with the bin's reference time (see the module)."""
    from punchbowl.level3.velocity import track_velocity

    return track_velocity(sorted(paths), reference_time, delta_t=delta_t, sparsity=sparsity, n_ofs=n_ofs)


class LowNoiseAverager(BinAverager):
    """Makes the ``PAM`` (polarized) or ``CAM`` (clear) of every 32-minute bin of a window that has inputs."""

    level, obs = "3", "M"
    code_version = LEVEL3_LOW_NOISE_CODE_VERSION
    input_level, input_obs = "3", "M"

    def __init__(self, session, archive, config, polarization: str, run_id: str | None = None) -> None:
        super().__init__(session, archive, config, run_id)
        self.code, input_code, self.complete_count = LOW_NOISE_CODES[polarization]
        self.input_codes = (input_code,)

    @property
    def wait(self) -> timedelta:
        """``level3.low_noise.wait_hours``."""
        return timedelta(hours=self.config.level3.low_noise.wait_hours)

    def make_cube(self, inputs: list[ProductFile], reference_time: datetime):
        """Run punchbowl's low-noise flow on the bin's mosaics."""
        return run_low_noise_flow([str(self.archive.absolute(p.path)) for p in inputs], reference_time)


class VelocityBuilder(GridModelBuilder):
    """Makes the ``VAM`` of a 6-hour bin from its Level 3 ``PTM``, or refuses it with too few."""

    level, code, obs = "3", "VA", "M"
    code_version = LEVEL3_VAM_CODE_VERSION

    def candidates(self, reference_time: datetime) -> list[ProductFile]:
        """Return the ``PTM`` of the bin centred on ``reference_time``."""
        start = reference_time - VELOCITY_BIN / 2
        return window_inputs(self.session, "3", ("PT",), "M", start, start + VELOCITY_BIN)

    def choose(self, candidates: list[ProductFile], reference_time: datetime) -> tuple[list[ProductFile], str | None]:
        """Every ``PTM`` of the bin, or a refusal below ``level3.velocity.min_inputs``."""
        minimum = self.config.level3.velocity.min_inputs
        if len(candidates) < minimum:
            start = reference_time - VELOCITY_BIN / 2
            return [], f"VAM {start:%Y-%m-%dT%H:%M}: {len(candidates)} PTM in the 6-hour bin, the minimum is {minimum}"
        return candidates, None

    def build(self, reference_time: datetime, partition_key: str | None = None):
        """Make, confirm or refuse the map of one bin; the catalog's ``model_refusals`` follows."""
        from punchpipe_assets.level3.fcorona import record_model_outcome

        outcome = super().build(reference_time, partition_key)
        record_model_outcome(self.session, self.level, outcome, partition_key, self.run_id)
        return outcome

    def write_cube(self, cube, path) -> str:
        """Write the map without a derived celestial WCS (its frame is radius by azimuth: punchbowl cannot convert it).

        punchbowl's own ``generate_level3_velocity_flow`` fails here too when asked to write its output.
        """
        return self.archive.write_cube(cube, path, skip_stats=False, skip_wcs_conversion=True)

    def settings_fingerprint(self) -> object:
        """Return the settings a velocity map depends on."""
        return self.config.level3.velocity.model_dump()

    def make_cube(self, inputs: list[ProductFile], reference_time: datetime):
        """Run punchbowl's ``track_velocity``."""
        settings = self.config.level3.velocity
        paths = [str(self.archive.absolute(p.path)) for p in inputs]
        return run_velocity(paths, reference_time, settings.delta_t, settings.sparsity, settings.n_ofs)
