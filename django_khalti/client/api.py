"""KhaltiClient: one method per endpoint of Khalti's merchant API.

Each method sends its request through the transport, tells a definitive refusal
from an unknown outcome by Khalti's HTTP status, and hands the body to the
parsers. The secret key travels only in the ``Authorization`` header.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import quote, urljoin

from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_variables

from ..conf import khalti_settings
from ..exceptions import (
    KhaltiBadResponse,
    KhaltiConfigurationError,
    KhaltiError,
    KhaltiRejected,
    KhaltiUnavailable,
)
from . import transport
from .answers import (
    KhaltiInitiation,
    KhaltiLedgerPage,
    KhaltiLookup,
    KhaltiStatus,
    KhaltiTransaction,
)
from .parsing import (
    error_message,
    parse_initiation,
    parse_ledger_page,
    parse_lookup,
    parse_status,
    parse_transaction,
)

# The client's one logger, "django_khalti.client", whichever of its modules logs.
logger = logging.getLogger(__package__)

#: 4xx answers that say nothing final about a request (timeout, conflict, too early).
UNSETTLED_4XX = {408, 409, 425}

VERIFY_PATH = "api/v2/payment/verify/"
STATUS_PATH = "api/v2/payment/status/"
TRANSACTION_PATH = "api/v2/merchant-transaction/{idx}/"
#: The merchant's transaction list, paged with ``?page=N``; Khalti's older path
#: (:data:`LEGACY_TRANSACTIONS_PATH`) is asked when this one is not found.
TRANSACTIONS_PATH = "api/v2/merchant-transaction/"
LEGACY_TRANSACTIONS_PATH = "api/merchant-transaction/"
REFUND_PATH = "api/merchant-transaction/{idx}/refund/"
INITIATE_PATH = "api/v2/epayment/initiate/"
LOOKUP_PATH = "api/v2/epayment/lookup/"

#: The longest ``TIMEOUT`` accepted, in seconds: a call must end within a request's life.
MAX_TIMEOUT = 120


def key_is_clean(key: str) -> bool:
    """Whether a secret key can go into a header as it is: printable ASCII only (no
    whitespace, control character, or invisible one such as a file's byte-order mark).
    """
    return re.fullmatch(r"[\x21-\x7e]+", key) is not None


def timeout_is_sane(timeout: object) -> bool:
    """Whether ``TIMEOUT`` is a real number of seconds in ``(0, MAX_TIMEOUT]``."""
    return (
        isinstance(timeout, (int, float))
        and not isinstance(timeout, bool)
        and 0 < timeout <= MAX_TIMEOUT  # False for NaN and infinity too
    )


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _about(endpoint: str) -> Callable[[_Method], _Method]:
    """Name ``endpoint`` on every :class:`KhaltiError` the decorated call raises."""

    def decorate(method: _Method) -> _Method:
        @functools.wraps(method)
        def call(self: KhaltiClient, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except KhaltiError as exc:
                exc.endpoint = exc.endpoint or endpoint
                raise

        return cast("_Method", call)

    return decorate


class KhaltiClient:
    """Khalti's merchant API over HTTP: one method per endpoint, no state but the settings.

    Build it with :meth:`from_settings`. Every method returns a parsed answer or
    raises a :class:`~django_khalti.exceptions.KhaltiError`:
    :class:`~django_khalti.exceptions.KhaltiRejected` for a definitive refusal,
    :class:`~django_khalti.exceptions.KhaltiUnavailable` (or a subclass) when the
    outcome is unknown. ``__init__`` raises
    :class:`~django_khalti.exceptions.KhaltiConfigurationError` for a missing key,
    a non-http(s) ``base_url`` or a timeout that is not a positive number.
    """

    def __init__(self, secret_key: str, base_url: str, timeout: float) -> None:
        if not secret_key or not isinstance(secret_key, str):
            raise KhaltiConfigurationError("KHALTI['SECRET_KEY'] is not set.")
        if not key_is_clean(secret_key):
            # Never the key itself in the message: it ends up in logs and trackers.
            raise KhaltiConfigurationError(
                "KHALTI['SECRET_KEY'] has whitespace or control characters around or in it "
                "(a newline read from a file?): strip it."
            )
        if not isinstance(base_url, str) or not base_url.startswith(("https://", "http://")):
            raise KhaltiConfigurationError("KHALTI['BASE_URL'] must be an http(s) URL.")
        if not timeout_is_sane(timeout):
            raise KhaltiConfigurationError(
                f"KHALTI['TIMEOUT'] must be a number of seconds above 0 and at most {MAX_TIMEOUT}."
            )
        self._secret_key = secret_key
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout = float(timeout)

    @classmethod
    def from_settings(cls) -> KhaltiClient:
        """A client for ``KHALTI``'s ``SECRET_KEY``, ``BASE_URL`` and ``TIMEOUT`` as they are now."""
        return cls(
            secret_key=khalti_settings.SECRET_KEY,
            base_url=khalti_settings.BASE_URL,
            timeout=khalti_settings.TIMEOUT,
        )

    def __repr__(self) -> str:
        return f"<KhaltiClient {self.base_url} timeout={self.timeout}>"

    # --- endpoints ---------------------------------------------------------

    @_about("verify")
    def verify(self, token: str, amount: int) -> KhaltiTransaction:
        """Verify a widget payment. Moves the buyer's money: never call it twice blindly.

        Raises :class:`KhaltiRejected` when Khalti refuses the token (HTTP 400),
        :class:`KhaltiUnavailable` when the outcome is unknown.
        """
        status, body = self._request("POST", VERIFY_PATH, json={"token": token, "amount": amount})
        if status != 200:
            raise self._refusal(status, body)
        return parse_transaction(body)

    @_about("status")
    def status(self, token: str, amount: int) -> KhaltiStatus:
        """Ask what became of a widget payment. Read-only: safe after an unknown outcome."""
        status, body = self._request("GET", STATUS_PATH, params={"token": token, "amount": amount})
        # The status endpoint's HTTP codes are undocumented: a body of the right
        # shape is the answer, whatever the code.
        answer = parse_status(body)
        if answer is not None:
            return answer
        raise self._refusal(status, body)

    @_about("transaction")
    def transaction(self, idx: str) -> KhaltiTransaction:
        """Khalti's record of one transaction, by its ``idx``. Read-only."""
        status, body = self._request("GET", TRANSACTION_PATH.format(idx=quote(idx, safe="")))
        if status != 200:
            # A readable 404 is Khalti knowing no such transaction: a definitive answer.
            raise self._refusal(status, body, any_4xx=True)
        return parse_transaction(body, plain_state=True)

    @_about("transactions")
    def transactions(self, page: int = 1) -> KhaltiLedgerPage:
        """Page ``page`` (from 1) of the merchant's transaction list. Read-only.

        Raises :class:`KhaltiRejected` for a page Khalti says is not there (HTTP 404
        with a readable body: past the list's end), :class:`KhaltiUnavailable` when
        the outcome is unknown, :class:`KhaltiBadResponse` for a page without records.
        """
        status, body = self._request("GET", TRANSACTIONS_PATH, params={"page": page})
        if status == 404:
            # No such page at the v2 path: Khalti's older path may be the one that has
            # the list (asked for every page, so a walk never mixes the two's ends).
            older = self._request("GET", LEGACY_TRANSACTIONS_PATH, params={"page": page})
            if older[0] == 200:
                status, body = older
        if status != 200:
            raise self._refusal(status, body, any_4xx=True)
        return parse_ledger_page(body, page)

    @_about("refund")
    def refund(
        self, idx: str, amount: int | None = None, mobile: str | None = None
    ) -> dict[str, Any]:
        """Refund a transaction: all of it without ``amount``, else ``amount`` paisa.

        Moves money back to the buyer: never call it twice blindly. ``mobile``
        is the Khalti id to refund to, which Khalti wants for bank-funded
        payments. Returns Khalti's answer; raises :class:`KhaltiRejected` when
        Khalti refuses with a readable message, :class:`KhaltiUnavailable`
        when the outcome is unknown.
        """
        body: dict[str, Any] = {}
        if amount is not None:
            body["amount"] = amount
        if mobile:
            body["mobile"] = mobile
        status, answer = self._request(
            "POST", REFUND_PATH.format(idx=quote(idx, safe="")), json=body
        )
        detail = answer.get("detail") if isinstance(answer, dict) else None
        if (
            status == 200
            and isinstance(answer, dict)
            and isinstance(detail, str)
            and "success" in detail.lower()
        ):
            return answer
        if status == 200:
            # Not the documented success: whether money went back is unknown.
            logger.warning("Khalti answered a refund with HTTP 200 but no success message.")
            raise KhaltiBadResponse()
        raise self._refusal(status, answer, any_4xx=True)

    @_about("initiate")
    def initiate(
        self,
        *,
        return_url: str,
        website_url: str,
        amount: int,
        purchase_order_id: str,
        purchase_order_name: str,
        customer_info: dict[str, Any] | None = None,
        amount_breakdown: list[dict[str, Any]] | None = None,
        product_details: list[dict[str, Any]] | None = None,
    ) -> KhaltiInitiation:
        """Start an ePayment. Raises :class:`KhaltiRejected` with Khalti's field
        messages (``exc.body``) when it refuses the request.
        """
        body: dict[str, Any] = {
            "return_url": return_url,
            "website_url": website_url,
            "amount": amount,
            "purchase_order_id": purchase_order_id,
            "purchase_order_name": purchase_order_name,
        }
        optional = {
            "customer_info": customer_info,
            "amount_breakdown": amount_breakdown,
            "product_details": product_details,
        }
        body.update({key: value for key, value in optional.items() if value})
        status, answer = self._request("POST", INITIATE_PATH, json=body)
        if status != 200:
            raise self._refusal(status, answer)
        return parse_initiation(answer, self.base_url)

    @_about("lookup")
    def lookup(self, pidx: str) -> KhaltiLookup:
        """What became of an ePayment. Read-only: safe to ask at any time."""
        status, body = self._request("POST", LOOKUP_PATH, json={"pidx": pidx})
        # Khalti answers Expired and User canceled with HTTP 400 and the same body.
        answer = parse_lookup(body, pidx) if status in (200, 400) else None
        if answer is not None:
            return answer
        raise self._refusal(status, body, any_4xx=True)

    # --- plumbing ----------------------------------------------------------

    # The key sits in this frame (and requests' below it): Django's error
    # reports must not show any of their variables.
    @method_decorator(sensitive_variables())
    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """Call Khalti and parse its JSON answer, all within ``TIMEOUT`` seconds
        (:func:`~django_khalti.client.transport.send` keeps the deadline).
        """
        url = urljoin(self.base_url, path)
        started = time.monotonic()
        headers = {"Authorization": f"Key {self._secret_key}"}
        status, content = transport.send(method, url, path, headers, self.timeout, kwargs)
        logger.debug(
            "Khalti %s %s answered HTTP %s in %.0f ms",
            method,
            path,
            status,
            (time.monotonic() - started) * 1000,
        )
        if status in (401, 403):
            logger.error(
                "Khalti refused the call (HTTP %s, saying %r): check KHALTI['SECRET_KEY'] "
                "and BASE_URL.",
                status,
                self._reason(content),
            )
            raise KhaltiBadResponse(khalti_status=status)
        if status == 429 or status >= 500:
            raise KhaltiUnavailable(khalti_status=status)
        try:
            body = _storable(
                json.loads(content, parse_constant=_no_constant, parse_float=_finite_or_none)
            )
        except (ValueError, RecursionError):
            logger.warning("Khalti %s %s answered with a body that is not JSON.", method, path)
            raise KhaltiBadResponse(khalti_status=status) from None
        return status, body

    def _reason(self, content: bytes) -> str:
        """The ``detail`` of a refusal's JSON body, short and without the key, for the
        log: "Invalid token." from Khalti, or why a local sandbox will not serve.
        """
        try:
            detail = json.loads(content).get("detail")
        except (ValueError, AttributeError, RecursionError):
            return ""
        if not isinstance(detail, str):
            return ""
        return detail.replace(self._secret_key, "[key]")[:200]

    def _refusal(self, status: int, body: Any, any_4xx: bool = False) -> KhaltiError:
        """A definitive refusal for a readable HTTP 400, an unknown outcome otherwise.

        With ``any_4xx``, any readable 4xx answer is a refusal (refunds: Khalti
        documents their failures only as "non-200 with a detail").
        """
        message = error_message(body)
        if message and (
            status == 400 or (any_4xx and 400 <= status < 500 and status not in UNSETTLED_4XX)
        ):
            return KhaltiRejected(message, khalti_status=status, body=body)
        logger.warning("Khalti answered HTTP %s with a body of an unknown shape.", status)
        return KhaltiBadResponse(khalti_status=status)


def _no_constant(name: str) -> None:
    """``NaN`` and ``Infinity``, which Python reads but JSON has no word for (and
    a JSON column refuses): read as null, so an answer carrying one can be stored.
    """
    return None


def _finite_or_none(text: str) -> float | None:
    """A JSON number as Python reads it, but one too large for a float (``1e400``,
    which Python reads as infinity and a JSON column refuses) read as null, as
    :func:`_no_constant` reads ``Infinity``.
    """
    number = float(text)
    return number if math.isfinite(number) else None


def _storable(value: Any) -> Any:
    """Khalti's answer with every NUL character (which PostgreSQL refuses in text and
    JSON) as U+FFFD: an answer that proves a payment must be storable with it.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    return value
