"""Level 3 ``PTM``/``CTM``: each ``PIM``/``CIM`` minus the two starfield models that bracket it.

A ``PIM``/``CIM`` is found by its cadence slot (``acquisition_time``), as the ``PIM``/``CIM`` are
found from the Level 2 groups, so a remade ``PIM`` replaces its ``PTM``. Its models are chosen by
the bracketing rule, the pipeline's own pair first, else a pair of delivered (bootstrap) models,
never one of each; without a pair it waits. The rest (fingerprints, unchanged re-runs, lineage) is
the ``PIM``/``CIM`` processor's.

punchbowl 0.0.25's ``level3_core_flow`` is called thinly wrapped (``run_level3_core_flow``): it
zips the mosaics with ``nfi_list`` (``strict=True``) and needs ``nfi_wfi_divide_radius`` bound,
which the control segment in service does not pass for ``PTM`` (the call fails to bind). Until the
NFI chain exists, each mosaic gets ``None`` as its NFI and the radius is ``None`` (no NFI region).
Its starfield subtraction fails on every ``PIM`` (the Stokes axis reaches ``reproject_adaptive``):
``fixes.starfield_subtraction_on_sky`` wraps the call.
"""

from __future__ import annotations

from collections.abc import Sequence

from punchpipe_assets.fixes import starfield_subtraction_on_sky
from punchpipe_assets.level3.subtraction import SubtractedMosaicProcessor
from punchpipe_assets.resources.catalog import ProductFile

# Bumped whenever the way a PTM/CTM is made changes; part of its fingerprint.
LEVEL3_PTM_CTM_CODE_VERSION = "level3-ptm-ctm-v1"
#: Product code and starfield model code, by ``PIM``/``CIM`` code.
BACKGROUND_PRODUCT_CODES = {"PI": "PT", "CI": "CT"}
STARFIELD_MODEL_CODES = {"PI": "PS", "CI": "CS"}
STARFIELD_WAITING_REASON = "waiting for the bracketing starfield models"


def run_level3_core_flow(paths: Sequence[str], before_path: str, after_path: str):
    """One call of punchbowl's ``level3_core_flow`` on one ``PIM``/``CIM``, without NFI (see the module)."""
    from punchbowl.level3.flow import level3_core_flow

    with starfield_subtraction_on_sky():
        [cube] = level3_core_flow(
            [str(p) for p in paths],
            nfi_list=[None] * len(paths),
            before_starfield_path=str(before_path),
            after_starfield_path=str(after_path),
            nfi_wfi_divide_radius=None,
        )
    return cube


class BackgroundSubtractedProcessor(SubtractedMosaicProcessor):
    """Makes the ``PTM``/``CTM`` of every ``PIM``/``CIM`` of a window, or says which models it waits for.

    Parameters
    ----------
    session, archive, config, run_id
        As ``SubtractedMosaicProcessor``.
    layer_codes
        ``PI`` (``PTM``), ``CI`` (``CTM``) or both.

    """

    input_level = "3"
    input_observatories = ("M",)
    product_codes = BACKGROUND_PRODUCT_CODES
    model_codes = STARFIELD_MODEL_CODES
    code_version = LEVEL3_PTM_CTM_CODE_VERSION
    waiting_reason = STARFIELD_WAITING_REASON
    model_settings = "starfield"

    def run(self, layers: list[ProductFile], pairs: list[list[ProductFile]]):
        """Call ``level3_core_flow`` on the ``PIM``/``CIM`` and its two starfield models."""
        [before, after] = pairs[0]
        return run_level3_core_flow(
            [self.archive.absolute(p.path) for p in layers],
            self.archive.absolute(before.path),
            self.archive.absolute(after.path),
        )


def describe_starfield_models(inputs: list[dict]) -> list[dict]:
    """Return the starfield models among a product's inputs, each with its ``origin`` (pipeline or delivered)."""
    return [i for i in inputs if i["code"] in STARFIELD_MODEL_CODES.values()]
