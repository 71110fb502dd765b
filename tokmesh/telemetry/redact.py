"""Redaction of credentials in logs, audit details, error details and config dumps (02 §17).

Two rules, applied together:

1. **Value rule** (every string, free text included): each occurrence of
   ``(tmtk_|tmas_|tmth_)[A-Za-z0-9_-]+`` becomes ``<prefix>***REDACTED***``, so a token, an
   API-key secret or a token hash never survives, wherever it is embedded. (The prefix is
   matched case-insensitively, a deliberate widening.)
2. **Name rule**: a string field whose name contains ``password``, ``secret``, ``token``,
   ``key``, ``credential``, ``auth`` or ``bearer`` (case-insensitive) becomes
   ``***REDACTED***`` when non-empty. Exempt are public-ID values (``^tm(ak|ss|nd)-``, so
   ``api_key_id`` stays readable) and file-path fields named ``*_file`` (the path of a key
   file is logged, never its content). Exempt values still pass the value rule.

The walk is recursive over mappings, lists and tuples and never mutates its input. This
runs on every log line, so the common case (a short string with no credential in it) costs
three substring scans done in C, and the name rule is memoised per field name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

REDACTED = "***REDACTED***"

# The three credential prefixes that carry a "_" separator (03 §2.4): token, API-key
# secret, token hash. Public IDs use "-" (tmak-, tmss-, tmnd-) and are never masked.
# The prefix is matched in any case: a token hash is accepted case-insensitively on input
# (01 §1), so "TMTH_..." is just as secret; masking more than the spec's literal rule
# is the safe side.
_VALUE_RE = re.compile(r"((?i:tmtk_|tmas_|tmth_))[A-Za-z0-9_-]+")
_VALUE_REPL = r"\1" + REDACTED
_SECRET_NAME_PARTS = ("password", "secret", "token", "key", "credential", "auth", "bearer")
_PUBLIC_ID_PREFIXES = ("tmak-", "tmss-", "tmnd-")


def redact_value(value: str) -> str:
    """Apply the value rule to one string: mask every ``tmtk_``/``tmas_``/``tmth_`` run."""
    # Fast path: lower() plus three C-level substring scans cost ~0.15 µs on a typical
    # message, a third of a regex search.
    low = value.lower()
    if "tmtk_" in low or "tmas_" in low or "tmth_" in low:
        return _VALUE_RE.sub(_VALUE_REPL, value)
    return value


@lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """True when a field called ``name`` falls under the name rule (``*_file`` is exempt)."""
    low = name.lower()
    if low.endswith("_file"):
        return False
    return any(part in low for part in _SECRET_NAME_PARTS)


def redact_field(name: str, value: Any) -> Any:
    """Redact ``value`` as the content of a field called ``name`` (both rules, recursive)."""
    if isinstance(value, str):
        if value and is_secret_name(name) and not value.startswith(_PUBLIC_ID_PREFIXES):
            return REDACTED
        return redact_value(value)
    if isinstance(value, bytes | bytearray | memoryview):
        # Raw bytes under a secret name are key material; elsewhere they are opaque and
        # are never shown either (logs and audit are text).
        return REDACTED if len(value) else ""
    if isinstance(value, list | tuple | set | frozenset):
        # Elements of a list inherit the list's field name: ``api_keys: ["..."]``.
        return [redact_field(name, item) for item in value]
    return redact(value)


def redact(obj: Any) -> Any:
    """Return a redacted copy of ``obj`` (str, mapping, list/tuple/set, or a scalar).

    Mapping keys are kept (as given); values are redacted by their key's name. Scalars
    other than strings (numbers, booleans, ``None``) are returned unchanged; other objects
    are returned unchanged too, so serialisers must pass their ``str()`` through
    :func:`redact_value`.
    """
    if isinstance(obj, str):
        return redact_value(obj)
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            if isinstance(key, str):
                out[key] = redact_field(key, value)
            else:
                out[key] = redact(value)
        return out
    if isinstance(obj, list | tuple | set | frozenset):
        return [redact(item) for item in obj]
    if isinstance(obj, bytes | bytearray | memoryview):
        return REDACTED if len(obj) else ""
    return obj
