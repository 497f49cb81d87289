"""A fake Khalti for your shop's tests: ``pip install "dj-khalti[testing]"``.

:class:`KhaltiFake` answers every Khalti endpoint dj-khalti calls (verify,
status, transaction, refund, ePayment initiate and lookup, and the merchant's
transaction list) at
``KHALTI["BASE_URL"]``, checks the ``Authorization: Key <SECRET_KEY>`` header,
and keeps state the way Khalti does. It is built on ``responses``: a call to
any other URL raises ``requests.ConnectionError``, so no test ever reaches the
network.

With pytest, dj-khalti's pytest plugin (loaded automatically once dj-khalti is
installed) gives each test a started fake as the ``khalti`` fixture (also
named ``khalti_fake``, for projects where ``khalti`` is taken)::

    def test_paid(client, khalti):
        payment = khalti.add_payment(amount=1000)
        ...

The fixture also sends dj-khalti's signals when a request through the test
client ends, as production's commit would, fails a test that left one unsent
(saying how to send it), and supplies ``KHALTI["WEBSITE_URL"]`` when the
settings have none: see :mod:`django_khalti.testing.plugin`.

Without pytest, use it as a context manager or with ``start()``/``stop()``::

    with KhaltiFake() as khalti:
        ...

This package imports ``responses`` only when one of its names is used, so
that the plugin never breaks a test run where ``responses`` is not installed.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .fake import (
        MIN_AMOUNT,
        OUTCOMES,
        KhaltiCall,
        KhaltiChoice,
        KhaltiFake,
        KhaltiFakeEpayment,
        KhaltiFakeForeign,
        KhaltiFakePayment,
        KhaltiRefundCall,
        KhaltiRequest,
        KhaltiStatusCall,
        KhaltiVerifyCall,
    )
    from .plugin import khalti, khalti_fake

__all__ = [
    "MIN_AMOUNT",
    "OUTCOMES",
    "KhaltiCall",
    "KhaltiChoice",
    "KhaltiFake",
    "KhaltiFakeEpayment",
    "KhaltiFakeForeign",
    "KhaltiFakePayment",
    "KhaltiRefundCall",
    "KhaltiRequest",
    "KhaltiStatusCall",
    "KhaltiVerifyCall",
    "khalti",
    "khalti_fake",
]

_FROM = {name: ".plugin" if name.startswith("khalti") else ".fake" for name in __all__}


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_FROM[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
