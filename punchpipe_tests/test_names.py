"""Safe forms of file names: ASCII, short enough for FITS provenance, never two names the same."""

from __future__ import annotations

import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from punchpipe_assets.names import CATALOG_LENGTH, PROVENANCE_LENGTH, catalog_name, display_name, safe_name

SAFE_FORM = re.compile(r"[A-Za-z0-9._-]+(~[0-9a-f]{10}(\.[A-Za-z0-9._-]+)?)?")


def test_plain_names_are_kept_and_others_get_a_hashed_ascii_form():
    """Keep plain short names; transliterate, cut and hash the others."""
    assert safe_name("PUNCH_TLM_1_20250801120000.tlm") == "PUNCH_TLM_1_20250801120000.tlm"
    assert safe_name("PUNCH_TLM_1_München 🚀.tlm").startswith("PUNCH_TLM_1_Munchen~")
    long = "PUNCH_TLM_2_" + "x" * 60 + ".tlm"
    assert len(safe_name(long)) == PROVENANCE_LENGTH and safe_name(long).endswith(".tlm")
    undecodable = os.fsdecode(b"PUNCH_\xff.tlm")
    assert display_name(undecodable) == "PUNCH_\\xff.tlm" and safe_name(undecodable).isascii()
    assert len(catalog_name(os.fsdecode(b"\xff" * 250 + b".tlm"))) <= CATALOG_LENGTH


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=120).filter(lambda n: "/" not in n and "\x00" not in n), unique=True))
def test_safe_forms_are_ascii_short_and_unambiguous(names):
    """Give any names ASCII forms of at most 40 characters, all distinct."""
    forms = [safe_name(name) for name in names]
    assert all(SAFE_FORM.fullmatch(form) and len(form) <= PROVENANCE_LENGTH for form in forms)
    assert len(set(forms)) == len(forms)
