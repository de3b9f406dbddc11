"""Thin wrappers where punchbowl 0.0.25 lacks something or is broken, each said here once.

- ``construct_f_corona_model`` always builds its models in the flight trefoil frame (4096x4096,
  ``load_trefoil_wcs`` imported into its module), so inputs in a reduced frame (punchbowl's own
  tests' ``trefoil_wcs[::8, ::8]``) fail to broadcast. ``f_corona_in_frame`` gives it the frame of
  the inputs for the duration of one call. Upstream should take the frame as a parameter. For
  NFI (``CNN`` inputs) it takes 2048x2048 (with the trefoil's WCS): ``f_corona_in_nfi_frame``
  gives a call on reduced-size ``CNN`` the frame (WCS and shape) of its first input.
- punchbowl's writer dithers the uncertainty layer with a clock-seeded stream:
  ``resources.archive.write_ndcube_deterministically``.
- ``construct_f_corona_model`` loads its inputs in a ``forkserver`` pool, whose children import
  punchbowl afresh (several seconds each, per model): ``preload_f_corona_in_forkserver`` has the
  fork server import it once, so the children start from it.
- ``level3_core_flow`` cannot subtract a starfield from a ``PIM``: ``subtract_starfield_background_task``
  and ``remove_starfield``'s ``subtract_from_image`` hand ``reproject_adaptive`` the polarized cubes'
  three-axis celestial WCS (with the Stokes axis) and the full 3-layer shape as ``shape_out``, which
  it rejects (``No matching signature found``; with a 2-axis WCS, ``dimensions ... should match``).
  ``starfield_subtraction_on_sky`` gives it the celestial axes and the image shape, for one call;
  for clear cubes (2-axis WCS) nothing changes. Upstream should drop the Stokes axis itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_PATCH_LOCK = threading.Lock()


@contextmanager
def f_corona_in_frame(downsample: int) -> Iterator[None]:
    """While in the block, punchbowl's F-corona model builder works in the trefoil frame reduced by ``downsample``.

    With ``downsample`` 1 nothing changes (the flight frame is punchbowl's default).
    """
    if downsample == 1:
        yield
        return
    from punchpipe_assets.calibration.bootstrap import reduced_trefoil

    with _f_corona_frame(*reduced_trefoil(downsample)):
        yield


@contextmanager
def f_corona_in_nfi_frame(first_input: str) -> Iterator[None]:
    """While in the block, punchbowl's F-corona model builder works in the frame of a ``CNN`` (its WCS and shape).

    For a flight-size ``CNN`` (2048 x 2048) nothing changes: punchbowl's own NFI frame stands.
    """
    from astropy.io import fits
    from punchbowl.data.punch_io import load_ndcube_from_fits

    with fits.open(first_input) as hdus:
        shape = (hdus[1].header["NAXIS2"], hdus[1].header["NAXIS1"])
    if shape == (2048, 2048):
        yield
        return
    wcs = load_ndcube_from_fits(first_input, include_provenance=False).wcs
    wcs.array_shape = shape
    with _f_corona_frame(wcs, shape):
        yield


@contextmanager
def _f_corona_frame(wcs, shape: tuple[int, int]) -> Iterator[None]:
    import punchbowl.level3.f_corona_model as f_corona_model

    with _PATCH_LOCK:
        original = f_corona_model.load_trefoil_wcs
        f_corona_model.load_trefoil_wcs = lambda is_nfi=False: (wcs.deepcopy(), shape)
        try:
            yield
        finally:
            f_corona_model.load_trefoil_wcs = original


def preload_f_corona_in_forkserver() -> None:
    """Have multiprocessing's fork server import punchbowl's F-corona module once, before it starts.

    Without effect once the fork server runs (it keeps what it preloaded when it started).
    """
    import multiprocessing

    multiprocessing.get_context("forkserver").set_forkserver_preload(["__main__", "punchbowl.level3.f_corona_model"])


def _celestial(wcs):
    """Return the two celestial axes of a WCS (punchbowl puts the Stokes axis of polarized cubes third)."""
    return wcs.dropaxis(2) if wcs.naxis == 3 else wcs


@contextmanager
def starfield_subtraction_on_sky() -> Iterator[None]:
    """While in the block, ``reproject_adaptive`` works on polarized cubes as the starfield subtraction calls it.

    Extra leading axes (the stacked uncertainty, the three polarizations) are broadcast by
    ``reproject`` once the WCS is the celestial pair and ``shape_out`` the image's last two axes.
    """
    import punchbowl.level3.stellar as stellar
    import reproject

    original = reproject.reproject_adaptive

    def on_sky(input_data, output_projection, shape_out=None, **kwargs):
        array, wcs = input_data
        shape = None if shape_out is None else tuple(shape_out)[-2:]
        return original((array, _celestial(wcs)), _celestial(output_projection), shape_out=shape, **kwargs)

    with _PATCH_LOCK:
        stellar.reproject_adaptive = reproject.reproject_adaptive = on_sky
        try:
            yield
        finally:
            stellar.reproject_adaptive = reproject.reproject_adaptive = original
