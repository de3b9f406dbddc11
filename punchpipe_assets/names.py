"""File names as they may be written elsewhere: FITS provenance, quarantine, the catalog.

Downlink names come from outside the pipeline: they may hold any character, any length, or bytes
that are not UTF-8 at all. punchbowl writes provenance into a FITS table column of 40 ASCII
characters, and the catalog stores text. These helpers give every name a form each of them takes.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata

PROVENANCE_LENGTH = 40  # punchbowl's provenance column: format A40
SAFE_CHARACTERS = re.compile(r"[A-Za-z0-9._-]+")
UNSAFE_RUN = re.compile(r"[^A-Za-z0-9.-]+")
HASH_CHARACTERS = 10
HASH_MARK = "~"
CATALOG_LENGTH = (
    255  # the catalog's name columns  # never in a name kept as it is, so encoded and plain names cannot be confused
)


def name_bytes(name: str) -> bytes:
    """Return the bytes a (possibly surrogate-escaped) file name has on disk."""
    return os.fsencode(name)


def is_valid_utf8(name: str) -> bool:
    """Say whether a name read from the file system is valid UTF-8 (no surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(name: str) -> str:
    r"""Return a name as text the catalog can store: undecodable bytes shown as ``\xNN``."""
    return name_bytes(name).decode("utf-8", errors="backslashreplace")


def safe_name(name: str, limit: int = PROVENANCE_LENGTH) -> str:
    """Return an ASCII-safe, unambiguous form of a file name of at most ``limit`` characters.

    A name of letters, digits, ``._-`` within the limit is kept as it is. Any other name becomes
    its transliterated, sanitized stem (cut to fit), ``~`` and a hash of its full bytes, then its
    suffix: ``PUNCH_TLM_1_Munchen~3f2a9c01bd.tlm``. Plain names never hold ``~``, so two names
    can only share a safe form by a hash collision.
    """
    if SAFE_CHARACTERS.fullmatch(name) and len(name) <= limit:
        return name
    raw = name_bytes(name)
    digest = hashlib.sha256(raw).hexdigest()[:HASH_CHARACTERS]
    text = display_name(name)
    stem, dot, suffix = text.rpartition(".")
    if not dot or not SAFE_CHARACTERS.fullmatch(suffix) or len(suffix) > 8:
        stem, suffix = text, ""
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    clean = UNSAFE_RUN.sub("_", ascii_stem).strip("_") or "file"
    tail = f"{HASH_MARK}{digest}" + (f".{suffix}" if suffix else "")
    return clean[: max(limit - len(tail), 1)] + tail


def catalog_name(name: str) -> str:
    """Return the name the catalog records a landing file under: its display name, or a safe form if too long.

    A valid UTF-8 name fits (file names have at most 255 bytes); an undecodable one may not once
    its bytes are escaped.
    """
    shown = display_name(name)
    return shown if len(shown) <= CATALOG_LENGTH else safe_name(name, limit=CATALOG_LENGTH)
