"""What a Khalti key's shape says about it: which key it is, and for which Khalti.

Khalti's keys carry their kind in a prefix: ``test_secret_key_…``, ``live_secret_key_…``,
``test_public_key_…`` and ``live_public_key_…``. Keys from the ePayment sandbox's
dashboard may be bare hex strings with no prefix: their shape says nothing, and
every function here answers ``False`` for them. The shape is evidence, never proof:
the checks, the widget tag and the sandbox act on a key only when its prefix names it.
The prefix is looked for anywhere in the value, in any case: a key pasted with what
stood before it (``Key live_secret_key_…``, a file's byte-order mark) is still that key.
"""

from __future__ import annotations

import re

_SHAPE = re.compile(r"(?P<mode>test|live)_(?P<kind>secret|public)_key_", re.IGNORECASE)


def _prefix(key: object) -> tuple[str, str] | None:
    """``(mode, kind)`` of a prefixed key, lower case: ``("live", "secret")``; else None."""
    if not isinstance(key, str):
        return None
    match = _SHAPE.search(key)
    return (match["mode"].lower(), match["kind"].lower()) if match else None


def looks_secret(key: object) -> bool:
    """Whether ``key`` is shaped like a secret key (``test_secret_key_…``, ``live_secret_key_…``)."""
    shape = _prefix(key)
    return shape is not None and shape[1] == "secret"


def looks_public(key: object) -> bool:
    """Whether ``key`` is shaped like a public key (``test_public_key_…``, ``live_public_key_…``)."""
    shape = _prefix(key)
    return shape is not None and shape[1] == "public"


def looks_live(key: object) -> bool:
    """Whether ``key`` is shaped like a live key (``live_…``): one that moves real money."""
    shape = _prefix(key)
    return shape is not None and shape[0] == "live"


def looks_test(key: object) -> bool:
    """Whether ``key`` is shaped like a test key (``test_…``): Khalti's sandbox's."""
    shape = _prefix(key)
    return shape is not None and shape[0] == "test"
