"""HTTP and Khalti's wire format: one method per endpoint.

The client never touches the ORM, DRF or signals. Khalti's words are
translated here, once, into :class:`KhaltiOutcome`: the services decide on
that enum and never see Khalti's spelling. Every call has a wall-clock
deadline of ``TIMEOUT`` seconds, from connecting to the last byte of the
answer, goes through one pooled ``requests.Session`` per process, and turns
every transport failure into a typed exception raised ``from`` its cause. The
secret key travels only in the ``Authorization`` header of each request; it is
never stored on the session, logged or put in an exception.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeGuard, TypeVar, cast
from urllib.parse import quote, urljoin, urlsplit

import requests
import urllib3.connection
import urllib3.connectionpool
from django.utils.dateparse import parse_datetime
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_variables
from requests.adapters import HTTPAdapter

from . import __version__
from .conf import khalti_settings
from .exceptions import (
    KhaltiBadResponse,
    KhaltiConfigurationError,
    KhaltiConnectionError,
    KhaltiError,
    KhaltiRejected,
    KhaltiTimeout,
    KhaltiUnavailable,
)

logger = logging.getLogger(__name__)
UTC = timezone.utc

USER_AGENT = f"dj-khalti/{__version__}"
MOBILE_MAX_LENGTH = 32  # Payment.mobile
#: 4xx answers that say nothing final about a request (timeout, conflict, too early).
UNSETTLED_4XX = {408, 409, 425}
POOL_MAXSIZE = 32
#: Khalti's answers are a few hundred bytes: a longer body is not an answer of Khalti's.
MAX_BODY = 1 << 20

VERIFY_PATH = "api/v2/payment/verify/"
STATUS_PATH = "api/v2/payment/status/"
TRANSACTION_PATH = "api/v2/merchant-transaction/{idx}/"
REFUND_PATH = "api/merchant-transaction/{idx}/refund/"
INITIATE_PATH = "api/v2/epayment/initiate/"
LOOKUP_PATH = "api/v2/epayment/lookup/"


class KhaltiOutcome(enum.Enum):
    """What an answer of Khalti's means, whatever the endpoint and its spelling.

    The client translates Khalti's states into these once (:func:`outcome_of`);
    the services decide on them alone.
    """

    #: The money moved to the merchant: ``Completed`` (verify, lookup, transaction),
    #: ``Complete`` (status).
    PAID = "paid"
    #: The buyer confirmed; Khalti waits for the merchant's verify (status: ``Confirmed``).
    AWAITING_VERIFICATION = "awaiting_verification"
    #: Started, not paid (yet): ``Initiated``.
    OPEN = "open"
    #: Khalti holds the payment, neither paid nor failed (lookup: ``Pending``).
    HELD = "held"
    #: No money moved and none will: ``Failed``, ``Error`` (status: not found for
    #: this token and amount), ``Expired``, ``User canceled``.
    FAILED = "failed"
    #: Paid, then all of it went back to the buyer.
    REFUNDED = "refunded"
    #: Paid, then part of it went back.
    PARTIALLY_REFUNDED = "partially_refunded"
    #: A state the client does not know: nothing can be decided on it.
    UNKNOWN = "unknown"


#: Khalti's states, as :func:`outcome_of` compares them (letters only, lower case).
_STATES = {
    "completed": KhaltiOutcome.PAID,
    "complete": KhaltiOutcome.PAID,
    "confirmed": KhaltiOutcome.AWAITING_VERIFICATION,
    "initiated": KhaltiOutcome.OPEN,
    "pending": KhaltiOutcome.HELD,
    "failed": KhaltiOutcome.FAILED,
    "error": KhaltiOutcome.FAILED,
    "expired": KhaltiOutcome.FAILED,
    "usercanceled": KhaltiOutcome.FAILED,
    "usercancelled": KhaltiOutcome.FAILED,
    "refunded": KhaltiOutcome.REFUNDED,
    "partiallyrefunded": KhaltiOutcome.PARTIALLY_REFUNDED,
}


def outcome_of(state: object) -> KhaltiOutcome:
    """Khalti's state as an outcome: case, spaces, hyphens and underscores do not
    matter (``"Partially Refunded"``, ``"partially_refunded"``); anything else is
    :attr:`KhaltiOutcome.UNKNOWN`.
    """
    if not isinstance(state, str):
        return KhaltiOutcome.UNKNOWN
    return _STATES.get(re.sub(r"[\s_-]", "", state).lower(), KhaltiOutcome.UNKNOWN)


@functools.cache
def get_session() -> requests.Session:
    """The process-wide session: kept-alive, pooled connections to Khalti."""
    session = requests.Session()
    adapter = _Adapter(pool_connections=4, pool_maxsize=POOL_MAXSIZE, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def _forget_after_fork() -> None:
    # A forked worker (gunicorn --preload) must not share the parent's pooled sockets.
    get_session.cache_clear()


os.register_at_fork(after_in_child=_forget_after_fork)


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


class _Late(Exception):
    """The call's deadline passed before (or while) its answer arrived."""


class _TooLong(Exception):
    """The answer is longer than any of Khalti's."""


def _cut(sock: socket.socket) -> None:
    """Shut a socket down, waking whatever thread is blocked reading it."""
    # socket.socket's own shutdown, also for an SSLSocket: the TLS layer is left to
    # the reading thread, which now gets an error instead of bytes.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Call:
    """One call to Khalti, shared by the caller and the thread that makes it: its
    deadline, and the sockets to cut once the caller stops waiting, so that a slow
    or trickling Khalti cannot keep the thread (or a pooled connection) busy.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._abandoned = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def over(self) -> bool:
        """Whether the caller has stopped waiting, or would have by now."""
        return self._abandoned or time.monotonic() >= self.deadline

    def watch(self, sock: socket.socket) -> None:
        """A socket the call uses; cut at once if the caller already gave up."""
        with self._lock:
            self._sockets.append(sock)
            abandoned = self._abandoned
        if abandoned:
            _cut(sock)

    def abandon(self) -> None:
        """The caller stops waiting: cut every socket the call uses."""
        with self._lock:
            self._abandoned = True
            sockets = list(self._sockets)
        for sock in sockets:
            _cut(sock)


#: The call the current thread is making (set in the threads :func:`_exchange` runs in).
_current = threading.local()


class _Watched:
    """A connection that tells the call it serves which socket it reads."""

    sock: socket.socket | None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._watch()

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self._watch()  # a kept-alive connection: its socket is already open
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def _watch(self) -> None:
        call = getattr(_current, "call", None)
        if call is not None and self.sock is not None:
            call.watch(self.sock)


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    """requests' adapter, on connections whose sockets a call can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


# The key is in these frames' ``headers`` and in requests' frames below them: Django's
# error reports hide every variable of them (they run in a thread of their own, out
# of reach of the caller's decorator).
@sensitive_variables()
def _make_the_call(
    call: _Call,
    outcome: list[tuple[int, bytes] | BaseException],
    done: threading.Event,
    *args: Any,
) -> None:
    """The body of a call's thread: :func:`_exchange`, its answer or error kept for
    the caller.
    """
    try:
        outcome.append(_exchange(call, *args))
    except BaseException as exc:  # handed to the caller, who raises it
        outcome.append(exc)
    finally:
        done.set()


@sensitive_variables()
def _exchange(
    call: _Call, method: str, url: str, headers: dict[str, str], timeout: float, kwargs: Any
) -> tuple[int, bytes]:
    """Send one request and read the whole answer, in a thread of its own.

    Never sends a request whose caller has already given up on it, and stops at
    the first read after the caller gives up (its sockets are cut then, too).
    """
    _current.call = call
    if call.over:
        raise _Late()
    with get_session().request(
        method,
        url,
        headers=headers,
        timeout=(timeout, timeout),
        allow_redirects=False,
        stream=True,
        **kwargs,
    ) as response:
        body = bytearray()
        for chunk in response.iter_content(1024):
            if call.over:
                raise _Late()
            body += chunk
            if len(body) > MAX_BODY:
                raise _TooLong()
        return response.status_code, bytes(body)


@dataclass(frozen=True)
class KhaltiTransaction:
    """Khalti's transaction record, as the verify endpoint returns it."""

    idx: str
    #: Khalti's word, for people; decide on :attr:`outcome`.
    state: str
    amount: int
    fee_amount: int | None
    mobile: str
    refunded: bool
    raw: dict[str, Any]

    @property
    def outcome(self) -> KhaltiOutcome:
        """The record's state; a completed record marked ``refunded`` is refunded."""
        outcome = outcome_of(self.state)
        if outcome is KhaltiOutcome.PAID and self.refunded:
            return KhaltiOutcome.REFUNDED
        return outcome


@dataclass(frozen=True)
class KhaltiStatus:
    """The answer of the status endpoint: ``state`` decides, ``status`` does not."""

    #: Khalti's word, for people; decide on :attr:`outcome`.
    state: str
    detail: str
    raw: dict[str, Any]

    @property
    def outcome(self) -> KhaltiOutcome:
        """What the state means: ``Complete`` paid, ``Confirmed`` awaiting verification, ..."""
        return outcome_of(self.state)

    @property
    def idx(self) -> str | None:
        """The transaction's ``idx``, when the answer names one (it usually does not)."""
        idx = self.raw.get("idx")
        return idx if isinstance(idx, str) and 0 < len(idx) <= 255 else None


@dataclass(frozen=True)
class KhaltiInitiation:
    """An ePayment Khalti has started: where to send the buyer, and until when."""

    pidx: str
    payment_url: str
    expires_at: datetime | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class KhaltiLookup:
    """What ePayment lookup says of a ``pidx``. ``status`` is as Khalti spells it."""

    pidx: str
    #: Khalti's word, for people; decide on :attr:`outcome`.
    status: str
    total_amount: int | None
    transaction_id: str | None
    fee: int | None
    refunded: bool
    raw: dict[str, Any]

    @property
    def outcome(self) -> KhaltiOutcome:
        """What the status means: ``Completed`` paid, ``Pending`` held, ``Expired`` failed, ...

        ``Completed`` with ``refunded`` true contradicts itself (lookup has states of
        its own for refunds): unknown.
        """
        outcome = outcome_of(self.status)
        if outcome is KhaltiOutcome.PAID and self.refunded:
            return KhaltiOutcome.UNKNOWN
        return outcome


def _aware(value: object) -> datetime | None:
    """An ISO 8601 timestamp from Khalti as an aware datetime, or None."""
    try:
        parsed = parse_datetime(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _is_int(value: object) -> TypeGuard[int]:
    """Whether a JSON value is an integer a payment can hold (``true`` is not, nor
    one beyond a 64-bit column).
    """
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


def error_message(body: object) -> str | None:
    """The human message of a Khalti error body, or None for an unknown shape.

    Khalti answers errors as ``{"detail": "..."}`` or as DRF field errors
    ``{"token": ["Invalid token."]}``, nested for nested fields
    (``{"customer_info": {"phone": ["..."]}}``).
    """
    if not isinstance(body, dict) or not body:
        return None
    detail = body.get("detail")
    if isinstance(detail, str):
        return detail
    messages = _field_messages(body, "")
    return "; ".join(messages) if messages else None


def _field_messages(errors: object, prefix: str) -> list[str] | None:
    """``["field: message", ...]`` from DRF-style errors, or None for another shape."""
    if isinstance(errors, str):
        return [f"{prefix}: {errors}" if prefix else errors]
    if isinstance(errors, list) and errors and all(isinstance(e, str) for e in errors):
        return [f"{prefix}: {' '.join(errors)}" if prefix else " ".join(errors)]
    if isinstance(errors, (dict, list)) and errors:
        items = errors.items() if isinstance(errors, dict) else enumerate(errors)
        messages: list[str] = []
        for key, value in items:
            if key == "error_key" or (isinstance(errors, list) and not value):
                continue
            found = _field_messages(value, f"{prefix}.{key}" if prefix else str(key))
            if found is None:
                return None
            messages.extend(found)
        return messages or None
    return None


def _translated(exc: BaseException, method: str, path: str) -> Exception:
    """The error to raise for what a call's thread raised: a fresh one, with no
    ``__cause__`` or ``__context__`` (requests' exceptions hold the request's
    headers; an invalid header's message holds its value: the key).
    """
    if isinstance(exc, (_Late, requests.Timeout)):
        return KhaltiTimeout()
    if isinstance(exc, (requests.exceptions.InvalidHeader, UnicodeError)):
        # Not logged here: whoever catches a configuration error logs it, once.
        return KhaltiConfigurationError(
            "KHALTI['SECRET_KEY'] cannot be sent in a header (whitespace or control "
            "characters?): every call to Khalti fails until it is fixed."
        )
    if isinstance(exc, requests.ConnectionError):
        return KhaltiConnectionError()
    if isinstance(exc, requests.RequestException):
        return KhaltiUnavailable()
    if isinstance(exc, _TooLong):
        logger.warning("Khalti %s %s answered with an overlong body.", method, path)
        return KhaltiBadResponse()
    if isinstance(exc, Exception):
        return exc  # a bug, not a transport failure: raised as it is
    raise exc  # SystemExit, KeyboardInterrupt: not ours to translate


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
        return self._transaction(body)

    @_about("status")
    def status(self, token: str, amount: int) -> KhaltiStatus:
        """Ask what became of a widget payment. Read-only: safe after an unknown outcome."""
        status, body = self._request("GET", STATUS_PATH, params={"token": token, "amount": amount})
        # The status endpoint's HTTP codes are undocumented: a body of the right
        # shape is the answer, whatever the code.
        if isinstance(body, dict) and isinstance(body.get("state"), str):
            detail = body.get("detail")
            return KhaltiStatus(
                state=body["state"],
                detail=detail if isinstance(detail, str) else "",
                raw=body,
            )
        raise self._refusal(status, body)

    @_about("transaction")
    def transaction(self, idx: str) -> KhaltiTransaction:
        """Khalti's record of one transaction, by its ``idx``. Read-only."""
        status, body = self._request("GET", TRANSACTION_PATH.format(idx=quote(idx, safe="")))
        if status != 200:
            # A readable 404 is Khalti knowing no such transaction: a definitive answer.
            raise self._refusal(status, body, any_4xx=True)
        return self._transaction(body, plain_state=True)

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
        if not (
            isinstance(answer, dict)
            and isinstance(answer.get("pidx"), str)
            and 0 < len(answer["pidx"]) <= 255
            and isinstance(answer.get("payment_url"), str)
        ):
            logger.warning("Khalti's initiate answer lacks pidx or payment_url.")
            raise KhaltiBadResponse()
        if not self._is_khaltis(answer["payment_url"]):
            # The buyer is sent there: only to Khalti (or where BASE_URL points).
            logger.warning("Khalti's initiate answer names a payment_url off Khalti's hosts.")
            raise KhaltiBadResponse()
        expires_at = _aware(answer.get("expires_at"))
        if expires_at is None and _is_int(answer.get("expires_in")):
            expires_at = datetime.now(UTC) + timedelta(seconds=answer["expires_in"])
        return KhaltiInitiation(
            pidx=answer["pidx"],
            payment_url=answer["payment_url"],
            expires_at=expires_at,
            raw=answer,
        )

    def _is_khaltis(self, url: str) -> bool:
        """Whether ``url`` is on Khalti's hosts (``khalti.com`` and its subdomains,
        over https) or on ``BASE_URL``'s host (a sandbox, a local fake).
        """
        try:
            if not self._plain_url(url):
                return False
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            return False
        if parts.scheme == "https" and (host == "khalti.com" or host.endswith(".khalti.com")):
            return True
        ours = urlsplit(self.base_url)
        return parts.scheme == ours.scheme and host == (ours.hostname or "").lower()

    @staticmethod
    def _plain_url(url: str) -> bool:
        """Printable ASCII with no backslash (browsers read it as ``/``), and a
        netloc that is a plain host and port (no userinfo).
        """
        return (
            re.fullmatch(r"[\x21-\x7e]+", url) is not None
            and "\\" not in url
            and re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", urlsplit(url).netloc) is not None
        )

    @_about("lookup")
    def lookup(self, pidx: str) -> KhaltiLookup:
        """What became of an ePayment. Read-only: safe to ask at any time."""
        status, body = self._request("POST", LOOKUP_PATH, json={"pidx": pidx})
        # Khalti answers Expired and User canceled with HTTP 400 and the same body.
        if isinstance(body, dict) and isinstance(body.get("status"), str) and status in (200, 400):
            given, total, fee, transaction_id = (
                body.get(k) for k in ("pidx", "total_amount", "fee", "transaction_id")
            )
            return KhaltiLookup(
                pidx=given if isinstance(given, str) else pidx,
                status=body["status"],
                total_amount=total if _is_int(total) else None,
                transaction_id=transaction_id
                if isinstance(transaction_id, str) and 0 < len(transaction_id) <= 255
                else None,
                fee=fee if _is_int(fee) and fee >= 0 else None,
                refunded=body.get("refunded") is True,
                raw=body,
            )
        raise self._refusal(status, body, any_4xx=True)

    # --- plumbing ----------------------------------------------------------

    # The key sits in this frame (and requests' below it): Django's error
    # reports must not show any of their variables.
    @method_decorator(sensitive_variables())
    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """Call Khalti and parse its JSON answer, all within ``TIMEOUT`` seconds.

        The call runs in a thread of its own, so that the caller stops waiting at
        the deadline however slowly Khalti answers; the call's sockets are then
        cut, and the thread ends.
        """
        url = urljoin(self.base_url, path)
        started = time.monotonic()
        call = _Call(started + self.timeout)
        headers = {"Authorization": f"Key {self._secret_key}"}
        outcome: list[tuple[int, bytes] | BaseException] = []
        done = threading.Event()
        threading.Thread(
            target=_make_the_call,
            args=(call, outcome, done, method, url, headers, self.timeout, kwargs),
            name="dj-khalti call",
            daemon=True,
        ).start()
        if not done.wait(max(call.deadline - time.monotonic(), 0)):
            call.abandon()
            raise KhaltiTimeout()
        if isinstance(outcome[0], BaseException):
            # Translated, never raised nor chained: requests' exceptions carry the
            # request, its headers (the key) and, for a bad header, its value.
            raise _translated(outcome[0], method, path)
        status, content = outcome[0]
        logger.debug(
            "Khalti %s %s answered HTTP %s in %.0f ms",
            method,
            path,
            status,
            (time.monotonic() - started) * 1000,
        )
        if status in (401, 403):
            logger.error(
                "Khalti refused our credentials (HTTP %s): check KHALTI['SECRET_KEY'].", status
            )
            raise KhaltiBadResponse(khalti_status=status)
        if status == 429 or status >= 500:
            raise KhaltiUnavailable(khalti_status=status)
        try:
            body = json.loads(content)
        except (ValueError, RecursionError):
            logger.warning("Khalti %s %s answered with a body that is not JSON.", method, path)
            raise KhaltiBadResponse(khalti_status=status) from None
        return status, body

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

    def _transaction(self, body: Any, *, plain_state: bool = False) -> KhaltiTransaction:
        state = body.get("state") if isinstance(body, dict) else None
        # Verify's answer nests the state ({"name": "Completed"}), as documented;
        # transaction records have also been seen with a plain string.
        state_name = state.get("name") if isinstance(state, dict) else None
        if plain_state and isinstance(state, str):
            state_name = state
        if not (
            isinstance(body, dict)
            and isinstance(body.get("idx"), str)
            and 0 < len(body["idx"]) <= 255
            and isinstance(state_name, str)
            and _is_int(body.get("amount"))
        ):
            logger.warning("Khalti's transaction record lacks idx, state or amount.")
            raise KhaltiBadResponse()
        fee = body.get("fee_amount")
        user = body.get("user") or body.get("source") or {}
        mobile = user.get("mobile") if isinstance(user, dict) else None
        return KhaltiTransaction(
            idx=body["idx"],
            state=state_name,
            amount=body["amount"],
            # Minor fields must never keep a paid transaction from being recorded.
            fee_amount=fee if _is_int(fee) and fee >= 0 else None,
            mobile=mobile[:MOBILE_MAX_LENGTH] if isinstance(mobile, str) else "",
            refunded=body.get("refunded") is True,
            raw=body,
        )
