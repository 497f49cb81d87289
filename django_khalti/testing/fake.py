"""A fake Khalti on ``responses``: Khalti's endpoints, its answers and its state.

Everything here plays Khalti's part, as described in Khalti's documentation;
none of it reuses dj-khalti's client, so that a test with the fake checks the
app against Khalti and not against itself.

Quick reference (``khalti`` is a started :class:`KhaltiFake`)::

    payment = khalti.add_payment(amount=1000)         # a widget payment the buyer made
    client.post(reverse("django_khalti:verify"), payment.payload("ORD-1"),
                content_type="application/json")
    khalti.verify_calls == [(payment.token, 1000)]

    epayment = khalti.last_epayment                   # after the app started an ePayment
    client.get(khalti.pay(epayment))                  # the buyer pays and comes back
    client.get(khalti.cancel(epayment))               # ... or cancels and comes back

    khalti.add_payment(token="t", amount=1000, outcome="timeout")  # its first verify times out
    khalti.fail_next("refund", "server_error")        # the next refund gets an HTML 500
    khalti.fail_next("any", "connection_error", times=None)        # Khalti is down
    khalti.answer_next("status", json={...}, delay=0.3)   # a slow answer (others go on meanwhile)
    khalti.on_next("verify", lambda request: ...)          # compute the answer per request
    choice = khalti.answer_next("lookup", json={...})      # each returns a KhaltiChoice:
    assert len(choice.calls) == 1                          # ... the calls it answered

Outcomes (:data:`OUTCOMES`), for :meth:`KhaltiFake.fail_next` and the
``outcome`` of :meth:`~KhaltiFake.add_payment` / :meth:`~KhaltiFake.add_epayment`:

``"rejected"``
    Khalti refuses: verify HTTP 400 ``{"token": ["Invalid token."]}``; status
    ``{"state": "Error", "detail": "Transaction not found"}``; lookup and
    transaction HTTP 404 ``{"detail": "Not found."}``; refund HTTP 400
    ``{"detail": "Refund period expired."}``; initiate HTTP 400 with a
    ``validation_error``. Nothing changes at Khalti.
``"wrong_amount"``
    Khalti answers for another amount (Rs 1 more) than the one asked: verify
    HTTP 200 with a completed record for that amount, lookup ``Completed``
    with that ``total_amount``, status ``Error`` (Khalti's answer to a wrong
    amount), transaction a record for that amount. Nothing changes at Khalti.
    Not an answer of refund or initiate (with ``"any"``, they answer as
    usual). A payment registered for another amount than the app verifies
    needs no outcome: Khalti refuses it, HTTP 400 ``Invalid token.``
``"timeout"``
    ``requests.exceptions.ReadTimeout`` before Khalti did anything.
``"timeout_after_processing"``
    Khalti did the work (verified, refunded, started the ePayment), then the
    answer was lost: ``ReadTimeout``. The status and lookup endpoints tell
    what happened, as they would at Khalti.
``"connection_error"``
    ``requests.exceptions.ConnectionError``: Khalti never saw the request.
``"server_error"``
    HTTP 500 with an HTML page. Nothing changes.
``"not_json"``
    HTTP 200 with an HTML page. Nothing changes.
``"unauthorized"``
    HTTP 401 ``{"detail": "Invalid token."}``, Khalti's answer to a wrong key.

Other answers Khalti gives depend on the payment's state, not on an outcome:
a pending, expired, cancelled or refunded payment is registered in that state
(``add_epayment(status="Pending")``, ``add_payment(state="Refunded")``) or
moved there (:meth:`~KhaltiFake.pay`, :meth:`~KhaltiFake.cancel`,
:meth:`~KhaltiFake.expire`, :meth:`~KhaltiFake.set_state`, a refund through
the app). Any other answer: :meth:`~KhaltiFake.answer_next`, or a callback that
computes it from the request: :meth:`~KhaltiFake.on_next`. All three choices
take ``delay=seconds`` (a slow Khalti) and return a :class:`KhaltiChoice`
whose ``calls`` are the calls it answered.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import requests
import responses
from django.utils import timezone as django_timezone

from ..conf import khalti_settings

#: Nepal's time zone, in which Khalti writes its timestamps.
NPT = timezone(timedelta(hours=5, minutes=45))

#: Khalti's endpoints: name, method and path under ``BASE_URL``.
ENDPOINTS: dict[str, tuple[str, re.Pattern[str]]] = {
    "verify": ("POST", re.compile(r"api/v2/payment/verify/")),
    "status": ("GET", re.compile(r"api/v2/payment/status/")),
    "transaction": ("GET", re.compile(r"api/v2/merchant-transaction/(?P<idx>[^/]+)/")),
    "refund": ("POST", re.compile(r"api/merchant-transaction/(?P<idx>[^/]+)/refund/")),
    "initiate": ("POST", re.compile(r"api/v2/epayment/initiate/")),
    "lookup": ("POST", re.compile(r"api/v2/epayment/lookup/")),
}

#: The outcomes :meth:`KhaltiFake.fail_next` knows (see the module's docstring).
OUTCOMES = frozenset(
    {
        "rejected",
        "wrong_amount",
        "timeout",
        "timeout_after_processing",
        "connection_error",
        "server_error",
        "not_json",
        "unauthorized",
    }
)
#: Outcomes that happen before Khalti reads the request, so whatever the key.
_TRANSPORT_OUTCOMES = frozenset({"timeout", "connection_error"})

#: A widget payment's state at Khalti (the status endpoint then says Confirmed
#: for a Completed payment not yet verified, Complete once verified).
WIDGET_STATES = ("Initiated", "Completed", "Failed", "Refunded", "Partially refunded")
#: An ePayment's status, as lookup spells it.
EPAYMENT_STATUSES = (
    "Initiated",
    "Pending",
    "Completed",
    "Expired",
    "User canceled",
    "Refunded",
    "Partially Refunded",
)
#: Lookup answers these with HTTP 400 (and the same body).
EPAYMENT_400 = ("Expired", "User canceled")

_STATUS_ANSWERS = {
    "Initiated": (True, "Transaction is initiated"),
    "Confirmed": (True, "User has confirmed the transaction"),
    "Complete": (True, "Transaction is complete"),
    "Failed": (False, "Payment failed"),
    "Refunded": (True, "Transaction is refunded"),
    "Partially refunded": (True, "Transaction is partially refunded"),
    "Error": (False, "Transaction not found"),
}

_ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_HTML_500 = "<!doctype html><html><body><h1>Server Error (500)</h1></body></html>"
_HTML_200 = "<!doctype html><html><body><h1>Khalti is under maintenance</h1></body></html>"
_INVALID_TOKEN = {"token": ["Invalid token."]}
_NOT_FOUND = {"detail": "Not found."}


def khalti_id() -> str:
    """A new id shaped like Khalti's (22 characters of base 57)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(22))


def _canonical(value: str, allowed: tuple[str, ...], what: str) -> str:
    for name in allowed:
        if value.strip().lower() == name.lower():
            return name
    raise ValueError(f"Unknown {what} {value!r}; one of {', '.join(allowed)}.")


def _now() -> datetime:
    return django_timezone.now().astimezone(NPT)


# --- what Khalti holds ------------------------------------------------------------------


@dataclass
class KhaltiFakePayment:
    """A widget payment at Khalti (see :meth:`KhaltiFake.add_payment`)."""

    token: str
    amount: int
    #: One of :data:`WIDGET_STATES`.
    state: str
    idx: str
    #: Whether the merchant has verified it (Khalti's status: Complete, not Confirmed).
    verified: bool = False
    mobile: str = "98XXXXXXX9"
    fee_amount: int = 0
    refunded_amount: int = 0
    #: Refunds Khalti made: ``(amount, mobile)``.
    refunds: list[tuple[int, str | None]] = field(default_factory=list)
    created_on: datetime = field(default_factory=_now)

    def payload(self, product_identity: str, **extra: Any) -> dict[str, Any]:
        """What the widget's ``onSuccess`` hands the page for this payment: the
        body to post to ``django_khalti:verify``.
        """
        return {
            "idx": self.idx,
            "token": self.token,
            "amount": self.amount,
            "mobile": self.mobile,
            "product_identity": product_identity,
            "product_name": product_identity,
            "product_url": "",
            "widget_id": "khalti-widget-1",
            **extra,
        }

    def record(self, amount: int | None = None) -> dict[str, Any]:
        """Khalti's transaction record, as verify and the transaction endpoint give it."""
        return _record(
            self.idx,
            self.amount if amount is None else amount,
            self.fee_amount,
            self.refunded_amount,
            self.mobile,
            self.created_on,
        )

    @property
    def status_state(self) -> str:
        """What the status endpoint says of it."""
        if self.state == "Completed":
            return "Complete" if self.verified else "Confirmed"
        return self.state


@dataclass
class KhaltiFakeEpayment:
    """An ePayment at Khalti (see :meth:`KhaltiFake.add_epayment`)."""

    pidx: str
    amount: int
    #: One of :data:`EPAYMENT_STATUSES`.
    status: str
    purchase_order_id: str = ""
    purchase_order_name: str = ""
    return_url: str = ""
    website_url: str = ""
    #: Khalti's transaction id, once the buyer has paid (what refunds need).
    transaction_id: str | None = None
    fee: int = 0
    mobile: str = ""
    refunded_amount: int = 0
    refunds: list[tuple[int, str | None]] = field(default_factory=list)
    expires_at: datetime | None = None
    payment_url: str = ""
    #: The body the app sent to initiate it (empty if registered with add_epayment).
    request: dict[str, Any] = field(default_factory=dict)
    created_on: datetime = field(default_factory=_now)

    def lookup_body(self, total_amount: int | None = None) -> dict[str, Any]:
        """What lookup answers for it."""
        return {
            "pidx": self.pidx,
            "total_amount": self.amount if total_amount is None else total_amount,
            "status": self.status,
            "transaction_id": self.transaction_id,
            "fee": self.fee,
            "refunded": self.refunded_amount > 0,
        }

    def return_params(self) -> dict[str, str]:
        """The query string Khalti appends to ``return_url`` when it sends the
        buyer back: the browser's word, which the app must not trust.
        """
        paid = self.transaction_id is not None and self.status != "User canceled"
        transaction_id = (self.transaction_id or "") if paid else ""
        return {
            "pidx": self.pidx,
            "transaction_id": transaction_id,
            "tidx": transaction_id,
            "amount": str(self.amount),
            "total_amount": str(self.amount),
            "mobile": self.mobile if paid else "",
            "status": self.status,
            "purchase_order_id": self.purchase_order_id,
            "purchase_order_name": self.purchase_order_name,
        }

    def return_url_with_params(self) -> str:
        """Where Khalti sends the buyer's browser back: ``return_url`` with
        :meth:`return_params`. Without a ``return_url`` (registered with
        ``add_epayment``), the app's ``django_khalti:epayment-return`` path.
        """
        base = self.return_url
        if not base:
            from django.urls import reverse

            base = reverse("django_khalti:epayment-return")
        return f"{base}{'&' if '?' in base else '?'}{urlencode(self.return_params())}"

    def record(self) -> dict[str, Any]:
        """Khalti's transaction record of the paid ePayment, as the transaction endpoint gives it."""
        return _record(
            self.transaction_id or "",
            self.amount,
            self.fee,
            self.refunded_amount,
            self.mobile,
            self.created_on,
        )


def _record(
    idx: str, amount: int, fee: int, refunded: int, mobile: str, created_on: datetime
) -> dict[str, Any]:
    return {
        "idx": idx,
        "type": {"idx": "e476BL6jt9kgagEmsakyTL", "name": "Wallet payment"},
        "state": {"idx": "DhvMj9hdRufLqkP8ZY4d8g", "name": "Completed", "template": "is complete"},
        "amount": amount,
        "fee_amount": fee,
        "refunded": refunded > 0,
        "created_on": created_on.isoformat(),
        "ebanker": None,
        "user": {"idx": "cCaPkRPQGn5D8StkiqqMJg", "name": "Test User", "mobile": mobile},
        "merchant": {
            "idx": "UM75Gm2gWmZvA4TPwkwZye",
            "name": "Test Merchant",
            "mobile": "merchant@example.com",
        },
    }


# --- what was asked ------------------------------------------------------------------------


@dataclass(frozen=True)
class KhaltiCall:
    """One request the app made to the fake Khalti."""

    #: One of ``verify``, ``status``, ``transaction``, ``refund``, ``initiate``, ``lookup``.
    endpoint: str
    method: str
    url: str
    #: The JSON or form body sent, or the query string for GET.
    params: dict[str, Any]
    #: Whether the ``Authorization`` header carried the right key.
    authorized: bool
    #: The outcome chosen for this call (``None``: Khalti answered by its state).
    outcome: str | None
    #: The HTTP status answered; ``None`` when the call raised (timeout, connection error).
    status_code: int | None
    #: The choice (:meth:`~KhaltiFake.answer_next`, :meth:`~KhaltiFake.fail_next`,
    #: :meth:`~KhaltiFake.on_next`) that answered it; ``None``: Khalti's state did.
    choice: KhaltiChoice | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class KhaltiRequest:
    """A request to the fake Khalti, as an :meth:`~KhaltiFake.on_next` callback sees it."""

    endpoint: str
    method: str
    url: str
    #: The JSON or form body sent, or the query string for GET (plus ``idx`` taken
    #: from the URL for refund and transaction).
    params: dict[str, Any]
    headers: dict[str, str]
    #: Whether the ``Authorization`` header carried the right key.
    authorized: bool


class KhaltiVerifyCall(NamedTuple):
    """A verify call, as :attr:`KhaltiFake.verify_calls` lists it: ``(token, amount)``."""

    token: Any
    amount: Any


class KhaltiStatusCall(NamedTuple):
    """A status call, as :attr:`KhaltiFake.status_calls` lists it: ``(token, amount)``."""

    token: Any
    amount: Any


class KhaltiRefundCall(NamedTuple):
    """A refund call, as :attr:`KhaltiFake.refund_calls` lists it: ``(idx, amount, mobile)``."""

    idx: str
    #: ``None`` for a full refund (an empty body).
    amount: Any
    mobile: Any


#: An HTTP answer as ``responses`` takes it: status, headers, body.
_Answer = tuple[int, dict[str, str], str]
#: The ``requests._Request`` ``responses`` hands the fake (whose ``url`` and
#: ``method`` types-requests marks optional: a sent request has both).
_Request = Any

#: What an :meth:`~KhaltiFake.on_next` callback may return (see there).
CallbackResult = Any


@dataclass(eq=False)
class KhaltiChoice:
    """An answer chosen ahead with :meth:`~KhaltiFake.answer_next`,
    :meth:`~KhaltiFake.fail_next` or :meth:`~KhaltiFake.on_next` (which return
    it): which calls it answered, and how many more it will answer.
    """

    endpoint: str
    key: str | None
    #: How many more calls it answers; ``None``: every call.
    times: int | None
    outcome: str | None = None
    answer: _Answer | None = None
    callback: Callable[[KhaltiRequest], CallbackResult] | None = None
    #: Seconds the fake waits before answering (outside its lock, so that other
    #: calls go on meanwhile).
    delay: float = 0
    #: The calls it answered, in order.
    calls: list[KhaltiCall] = field(default_factory=list)

    @property
    def used(self) -> bool:
        """Whether it answered a call."""
        return bool(self.calls)

    @property
    def spent(self) -> bool:
        """Whether it will answer no more calls."""
        return self.times == 0


_Override = KhaltiChoice


@dataclass
class _Received:
    endpoint: str
    request: _Request
    params: dict[str, Any]
    authorized: bool
    authorization: str | None
    choice: KhaltiChoice | None


def _as_int(value: Any) -> Any:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


# --- the fake ------------------------------------------------------------------------------


class KhaltiFake:
    """Khalti's merchant API, faked at the transport with ``responses``.

    ``base_url``: where the fake answers. By default ``KHALTI["BASE_URL"]``
    *as it is when each request is made*, so ``override_settings`` and
    pytest-django's ``settings`` work whenever they are applied.

    ``secret_key``: the key Khalti knows. By default ``KHALTI["SECRET_KEY"]``
    as it is when each request is made (like ``base_url``). A request with another key (or none) gets HTTP 401,
    as from Khalti, before any outcome chosen with :meth:`fail_next` or
    :meth:`answer_next` (except ``timeout`` and ``connection_error``, which
    happen before Khalti reads the request). Set :attr:`secret_key` to play a
    shop with a wrong key.

    Use it as a context manager, or :meth:`start` and :meth:`stop`. While it
    runs, any request to a URL that is not a Khalti endpoint at ``base_url``
    raises ``requests.ConnectionError`` (``responses``' way), so nothing
    reaches the network. Other services your test mocks can be added to
    :attr:`mock`, the underlying ``responses.RequestsMock``.
    """

    #: How long an ePayment link is good for (Khalti's sandbox: 30 minutes).
    EPAYMENT_LINK_SECONDS = 1800
    #: Where Khalti's hosted page for an ePayment is (never fetched by the app).
    PAYMENT_URL = "https://test-pay.khalti.com/?pidx={pidx}"

    def __init__(self, *, base_url: str | None = None, secret_key: str | None = None) -> None:
        self._base_url = self._normalise(base_url) if base_url else None
        self.secret_key: str | None = secret_key
        #: Widget payments by token.
        self.payments: dict[str, KhaltiFakePayment] = {}
        #: ePayments by pidx, in the order they were made.
        self.epayments: dict[str, KhaltiFakeEpayment] = {}
        #: Every request made to the fake Khalti, in order.
        self.calls: list[KhaltiCall] = []
        self._overrides: list[KhaltiChoice] = []
        self._lock = threading.RLock()
        self.mock = responses.RequestsMock(assert_all_requests_are_fired=False)
        for name, (method, path) in ENDPOINTS.items():
            self.mock.add_callback(
                method,
                re.compile(r"https?://.*"),
                callback=self._callback(name, path),
                match=[self._matcher(path)],
                content_type=None,
            )
        self._started = False

    # --- running -------------------------------------------------------------------------

    def start(self) -> KhaltiFake:
        """Start answering."""
        if self._started:
            raise RuntimeError("This KhaltiFake is already started.")
        self.mock.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Stop answering: ``requests`` goes back to the network."""
        if self._started:
            self.mock.stop(allow_assert=False)
            self._started = False

    def __enter__(self) -> KhaltiFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """Where the fake answers right now."""
        return self._base_url or self._normalise(khalti_settings.BASE_URL)

    @staticmethod
    def _normalise(url: object) -> str:
        if not isinstance(url, str):
            return ""
        return url if url.endswith("/") else url + "/"

    # --- Khalti's state ------------------------------------------------------------------

    def add_payment(
        self,
        *,
        amount: int,
        token: str | None = None,
        state: str = "Completed",
        idx: str | None = None,
        verified: bool = False,
        mobile: str = "98XXXXXXX9",
        fee_amount: int | None = None,
        refunded_amount: int | None = None,
        outcome: str | None = None,
    ) -> KhaltiFakePayment:
        """Register a widget payment: the buyer paid ``amount`` paisa in Khalti's widget.

        ``state`` is Khalti's (:data:`WIDGET_STATES`): ``Completed`` (the buyer
        confirmed: verify with the same amount answers the full transaction
        record and Khalti's status moves from Confirmed to Complete),
        ``Initiated`` (not confirmed yet) or ``Failed`` (verify refuses both),
        ``Refunded`` or ``Partially refunded`` (verified and refunded already).
        ``verified=True``: the merchant verified it already. Verify refuses,
        with HTTP 400 ``{"token": ["Invalid token."]}``, an unknown token, a
        different amount, and a token verified before (Khalti's answer to a
        repeat is undocumented; refusing shows up code that re-verifies).

        ``outcome`` (:data:`OUTCOMES`) is the answer to the *first* verify call
        for this token: ``add_payment(amount=1000, outcome="timeout")``;
        ``"rejected"`` also makes every status call for it answer ``Error``, as
        Khalti does for a payment it refuses.
        ``token`` and ``idx`` are made up when not given. Returns the payment;
        its :meth:`~KhaltiFakePayment.payload` is what the widget's page posts.
        """
        state = _canonical(state, WIDGET_STATES, "widget state")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ValueError("amount must be a positive int (paisa).")
        if refunded_amount is None:
            refunded_amount = {"Refunded": amount, "Partially refunded": max(1, amount // 2)}.get(
                state, 0
            )
        payment = KhaltiFakePayment(
            token=token or khalti_id(),
            amount=amount,
            state=state,
            idx=idx or khalti_id(),
            verified=verified or state in ("Refunded", "Partially refunded"),
            mobile=mobile,
            fee_amount=amount * 3 // 100 if fee_amount is None else fee_amount,
            refunded_amount=refunded_amount,
        )
        with self._lock:
            self.payments[payment.token] = payment
        if outcome is not None:
            self.fail_next("verify", outcome, key=payment.token)
        if outcome == "rejected":
            # Khalti refuses this payment: its status says so too ("Error": not found).
            self.fail_next("status", "rejected", key=payment.token, times=None)
        return payment

    def add_epayment(
        self,
        *,
        amount: int,
        pidx: str | None = None,
        status: str = "Initiated",
        purchase_order_id: str = "",
        purchase_order_name: str = "",
        return_url: str = "",
        transaction_id: str | None = None,
        fee: int = 0,
        mobile: str = "98XXXXX001",
        refunded_amount: int | None = None,
        expires_at: datetime | None = None,
        outcome: str | None = None,
    ) -> KhaltiFakeEpayment:
        """Register an ePayment, as if the app had initiated it.

        ``status`` is what lookup says (:data:`EPAYMENT_STATUSES`, any
        capitalisation): ``Initiated``, ``Pending``, ``Completed``,
        ``Expired`` and ``User canceled`` (both answered with HTTP 400, like
        Khalti), ``Refunded``, ``Partially Refunded``. A paid one gets a
        ``transaction_id`` unless given. ``outcome`` (:data:`OUTCOMES`) is the
        answer to the *first* lookup of this pidx. When the app initiates an
        ePayment, the fake registers it the same way: see :attr:`last_epayment`.
        """
        status = _canonical(status, EPAYMENT_STATUSES, "ePayment status")
        paid = status in ("Pending", "Completed", "Refunded", "Partially Refunded")
        if refunded_amount is None:
            refunded_amount = {"Refunded": amount, "Partially Refunded": max(1, amount // 2)}.get(
                status, 0
            )
        epayment = KhaltiFakeEpayment(
            pidx=pidx or khalti_id(),
            amount=amount,
            status=status,
            purchase_order_id=purchase_order_id,
            purchase_order_name=purchase_order_name,
            return_url=return_url,
            transaction_id=transaction_id or (khalti_id() if paid else None),
            fee=fee,
            mobile=mobile if paid else "",
            refunded_amount=refunded_amount,
            expires_at=expires_at or _now() + timedelta(seconds=self.EPAYMENT_LINK_SECONDS),
        )
        epayment.payment_url = self.PAYMENT_URL.format(pidx=epayment.pidx)
        with self._lock:
            self.epayments[epayment.pidx] = epayment
        if outcome is not None:
            self.fail_next("lookup", outcome, key=epayment.pidx)
        return epayment

    @property
    def last_epayment(self) -> KhaltiFakeEpayment:
        """The ePayment initiated (or added) last."""
        if not self.epayments:
            raise LookupError("No ePayment was initiated.")
        return list(self.epayments.values())[-1]

    def epayment(self, pidx: str | KhaltiFakeEpayment) -> KhaltiFakeEpayment:
        """The ePayment of this pidx."""
        if isinstance(pidx, KhaltiFakeEpayment):
            return pidx
        try:
            return self.epayments[pidx]
        except KeyError:
            raise LookupError(f"No ePayment {pidx!r} at the fake Khalti.") from None

    def pay(
        self,
        pidx: str | KhaltiFakeEpayment,
        *,
        status: str = "Completed",
        mobile: str = "98XXXXX001",
    ) -> str:
        """The buyer pays an ePayment on Khalti's page. Returns the URL Khalti then
        sends the browser to (``return_url`` and its query string), ready for
        ``client.get(...)``. ``status="Pending"``: Khalti holds the payment
        (call ``pay`` again to complete it).
        """
        with self._lock:
            epayment = self.epayment(pidx)
            status = _canonical(status, ("Completed", "Pending"), "payment status")
            if epayment.status not in ("Initiated", "Pending"):
                raise ValueError(
                    f"ePayment {epayment.pidx} is {epayment.status}: it cannot be paid."
                )
            epayment.status = status
            epayment.transaction_id = epayment.transaction_id or khalti_id()
            epayment.mobile = mobile
            return epayment.return_url_with_params()

    def cancel(self, pidx: str | KhaltiFakeEpayment) -> str:
        """The buyer cancels on Khalti's page: lookup now says ``User canceled``.
        Returns the URL Khalti sends the browser back to.
        """
        with self._lock:
            epayment = self.epayment(pidx)
            if epayment.status not in ("Initiated", "Pending"):
                raise ValueError(
                    f"ePayment {epayment.pidx} is {epayment.status}: it cannot be canceled."
                )
            epayment.status = "User canceled"
            return epayment.return_url_with_params()

    def expire(self, pidx: str | KhaltiFakeEpayment) -> None:
        """The ePayment's link runs out unpaid: lookup now says ``Expired``.

        (An ``Initiated`` ePayment also expires by itself once ``expires_at``
        has passed, as the clock of ``django.utils.timezone.now`` tells.)
        """
        with self._lock:
            epayment = self.epayment(pidx)
            if epayment.status != "Initiated":
                raise ValueError(
                    f"ePayment {epayment.pidx} is {epayment.status}: it cannot expire."
                )
            epayment.status = "Expired"

    def return_url(self, pidx: str | KhaltiFakeEpayment) -> str:
        """Where Khalti sends the buyer back for this ePayment as it stands."""
        return self.epayment(pidx).return_url_with_params()

    def set_state(self, key: str, state: str) -> None:
        """Move a payment (by token or idx) or an ePayment (by pidx) to ``state``,
        as things happening at Khalti outside the app would.
        """
        with self._lock:
            if key in self.epayments:
                self.epayments[key].status = _canonical(state, EPAYMENT_STATUSES, "ePayment status")
                return
            payment = self._payment(key)
            if payment is None:
                raise LookupError(f"No payment {key!r} at the fake Khalti.")
            payment.state = _canonical(state, WIDGET_STATES, "widget state")
            if payment.state in ("Refunded", "Partially refunded"):
                payment.verified = True

    # --- outcomes ------------------------------------------------------------------------

    def fail_next(
        self,
        endpoint: str,
        outcome: str,
        *,
        key: str | None = None,
        times: int | None = 1,
        delay: float = 0,
    ) -> KhaltiChoice:
        """Answer the next ``times`` calls to ``endpoint`` with ``outcome``.

        ``endpoint``: ``verify``, ``status``, ``transaction``, ``refund``,
        ``initiate``, ``lookup``, or ``any``. ``outcome``: one of
        :data:`OUTCOMES` (see the module's docstring). ``key`` limits it to one
        payment: a token, idx, pidx, transaction id or (initiate) purchase
        order id. ``times=None``: every call from now on. The first choice
        that fits a call is used. ``delay``: seconds to wait before answering
        (a slow Khalti; other calls are answered meanwhile). Returns the
        :class:`KhaltiChoice`, whose ``calls`` are the calls it answered.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"Unknown outcome {outcome!r}; one of {', '.join(sorted(OUTCOMES))}.")
        if outcome == "wrong_amount" and endpoint in ("refund", "initiate"):
            raise ValueError("wrong_amount is an answer of verify, status, transaction or lookup.")
        return self._override(KhaltiChoice(endpoint, key, times, outcome=outcome, delay=delay))

    def answer_next(
        self,
        endpoint: str,
        *,
        status: int = 200,
        json: Any = None,
        body: str | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
        times: int | None = 1,
        delay: float = 0,
    ) -> KhaltiChoice:
        """Answer the next ``times`` calls to ``endpoint`` with this HTTP answer
        instead of Khalti's (``json``, or a raw ``body``). Nothing changes at
        the fake Khalti. ``endpoint``, ``key``, ``times`` and ``delay`` as for
        :meth:`fail_next`; returns the :class:`KhaltiChoice`.
        """
        return self._override(
            KhaltiChoice(
                endpoint, key, times, answer=_http_answer(status, json, body, headers), delay=delay
            )
        )

    def on_next(
        self,
        endpoint: str,
        callback: Callable[[KhaltiRequest], CallbackResult],
        *,
        key: str | None = None,
        times: int | None = 1,
        delay: float = 0,
    ) -> KhaltiChoice:
        """Let ``callback`` answer the next ``times`` calls to ``endpoint``.

        The callback gets a :class:`KhaltiRequest` (params, headers, whether
        the key was right) and returns:

        * ``None``: Khalti answers as usual, by its state (a callback that only
          watches, or waits: it runs outside the fake's lock, so other calls
          are answered meanwhile);
        * an outcome name (:data:`OUTCOMES`);
        * ``(status, json)``, or ``(status, text)`` for a non-JSON body:
          that HTTP answer, and nothing changes at the fake Khalti;
        * an exception (returned or raised), which reaches the app as
          ``requests`` would raise it, e.g. ``requests.ReadTimeout()``.

        A request with a wrong key gets HTTP 401 without reaching the callback,
        as for :meth:`answer_next`. ``endpoint``, ``key``, ``times`` and
        ``delay`` (waited before the callback runs) as for :meth:`fail_next`;
        returns the :class:`KhaltiChoice`.
        """
        if not callable(callback):
            raise TypeError("on_next needs a callable: callback(request) -> answer.")
        return self._override(KhaltiChoice(endpoint, key, times, callback=callback, delay=delay))

    def _override(self, override: KhaltiChoice) -> KhaltiChoice:
        if override.endpoint != "any" and override.endpoint not in ENDPOINTS:
            raise ValueError(
                f"Unknown endpoint {override.endpoint!r}; one of {', '.join(ENDPOINTS)} or 'any'."
            )
        if override.times is not None and override.times < 1:
            raise ValueError("times must be at least 1, or None for every call.")
        if (
            isinstance(override.delay, bool)
            or not isinstance(override.delay, (int, float))
            or override.delay < 0
        ):
            raise ValueError("delay must be a number of seconds, 0 or more.")
        with self._lock:
            self._overrides.append(override)
        return override

    def _take_override(
        self, endpoint: str, keys: set[str], transport_only: bool
    ) -> KhaltiChoice | None:
        for override in self._overrides:
            if override.endpoint not in ("any", endpoint):
                continue
            if override.key is not None and override.key not in keys:
                continue
            if transport_only and override.outcome not in _TRANSPORT_OUTCOMES:
                return None
            if override.times is not None:
                override.times -= 1
                if override.times == 0:
                    self._overrides.remove(override)
            return override
        return None

    # --- what was asked ------------------------------------------------------------------

    def _calls(self, endpoint: str) -> list[KhaltiCall]:
        return [call for call in self.calls if call.endpoint == endpoint]

    @property
    def verify_calls(self) -> list[KhaltiVerifyCall]:
        """Every verify call: ``(token, amount)``, whatever was answered."""
        return [
            KhaltiVerifyCall(c.params.get("token"), _as_int(c.params.get("amount")))
            for c in self._calls("verify")
        ]

    @property
    def status_calls(self) -> list[KhaltiStatusCall]:
        """Every status call: ``(token or idx, amount)``."""
        return [
            KhaltiStatusCall(c.params.get("token"), _as_int(c.params.get("amount")))
            for c in self._calls("status")
        ]

    @property
    def transaction_calls(self) -> list[str]:
        """Every transaction-record call: the ``idx`` asked for."""
        return [c.params["idx"] for c in self._calls("transaction")]

    @property
    def refund_calls(self) -> list[KhaltiRefundCall]:
        """Every refund call: ``(idx, amount, mobile)``; ``amount`` ``None``: a full refund."""
        return [
            KhaltiRefundCall(c.params["idx"], c.params.get("amount"), c.params.get("mobile"))
            for c in self._calls("refund")
        ]

    @property
    def initiate_calls(self) -> list[dict[str, Any]]:
        """Every ePayment initiate call: the JSON body the app sent."""
        return [c.params for c in self._calls("initiate")]

    @property
    def lookup_calls(self) -> list[Any]:
        """Every ePayment lookup call: the ``pidx`` asked for."""
        return [c.params.get("pidx") for c in self._calls("lookup")]

    def reset_calls(self) -> None:
        """Forget the calls recorded so far (Khalti's state stays)."""
        with self._lock:
            self.calls.clear()

    # --- answering -----------------------------------------------------------------------

    def _matcher(self, path: re.Pattern[str]) -> Callable[[_Request], tuple[bool, str]]:
        def match(request: _Request) -> tuple[bool, str]:
            base = self.base_url
            url = urlsplit(request.url)
            here = f"{url.scheme}://{url.netloc}{url.path}"
            if base and here.startswith(base) and path.fullmatch(here[len(base) :]):
                return True, ""
            return False, f"not this Khalti endpoint at {base or '(no BASE_URL)'}"

        return match

    def _callback(self, endpoint: str, path: re.Pattern[str]) -> Callable[[_Request], _Answer]:
        def callback(request: _Request) -> _Answer:
            with self._lock:
                received = self._receive(endpoint, path, request)
            choice = received.choice
            chosen: Any = None
            if choice is not None and choice.delay:
                time.sleep(choice.delay)
            if choice is not None and choice.callback is not None:
                try:
                    chosen = choice.callback(
                        KhaltiRequest(
                            endpoint=endpoint,
                            method=request.method,
                            url=request.url,
                            params=received.params,
                            headers=dict(request.headers),
                            authorized=received.authorized,
                        )
                    )
                except Exception as exc:
                    chosen = exc
            with self._lock:
                return self._respond(received, chosen)

        return callback

    def _receive(self, endpoint: str, path: re.Pattern[str], request: _Request) -> _Received:
        url = urlsplit(request.url)
        params = self._params(request)
        if not isinstance(params, dict):
            params = {"body": params}
        matched = path.fullmatch(f"{url.scheme}://{url.netloc}{url.path}"[len(self.base_url) :])
        if matched and "idx" in matched.groupdict():
            params = {**params, "idx": unquote(matched["idx"])}
        keys = self._keys(params)
        authorization = request.headers.get("Authorization")
        known = self.secret_key if self.secret_key is not None else khalti_settings.SECRET_KEY
        authorized = bool(known) and authorization == f"Key {known}"
        choice = self._take_override(endpoint, keys, transport_only=not authorized)
        return _Received(endpoint, request, params, authorized, authorization, choice)

    def _respond(self, received: _Received, chosen: Any) -> _Answer:
        endpoint, request, params = received.endpoint, received.request, received.params
        choice, authorized = received.choice, received.authorized
        outcome = choice.outcome if choice else None
        answer = choice.answer if choice else None
        result: _Answer | BaseException | None = None
        if choice is not None and choice.callback is not None:
            if isinstance(chosen, BaseException):
                result, outcome = chosen, "callback"
            elif isinstance(chosen, str):
                if chosen not in OUTCOMES:
                    result, outcome = (
                        ValueError(
                            f"on_next callback returned an unknown outcome {chosen!r}; one of "
                            f"{', '.join(sorted(OUTCOMES))}."
                        ),
                        "callback",
                    )
                else:
                    outcome = chosen
            elif isinstance(chosen, tuple) and len(chosen) == 2:
                status, content = chosen
                answer = (
                    _http_answer(status, None, content)
                    if isinstance(content, str)
                    else _http_answer(status, content, None)
                )
            elif chosen is not None:
                result, outcome = (
                    TypeError(
                        "on_next callback must return None, an outcome, (status, json) or "
                        f"an exception, not {chosen!r}."
                    ),
                    "callback",
                )
        if result is not None:
            pass
        elif answer is not None:
            result = answer
        elif outcome == "connection_error":
            result = requests.exceptions.ConnectionError("Connection refused (fake Khalti).")
        elif outcome == "timeout":
            result = requests.exceptions.ReadTimeout("Read timed out (fake Khalti).")
        elif not authorized:
            result = _json(
                401,
                {
                    "detail": "Invalid token."
                    if received.authorization
                    else "Authentication credentials were not provided."
                },
            )
        elif outcome == "unauthorized":
            result = _json(401, {"detail": "Invalid token."})
        elif outcome == "server_error":
            result = (500, {"Content-Type": "text/html; charset=utf-8"}, _HTML_500)
        elif outcome == "not_json":
            result = (200, {"Content-Type": "text/html; charset=utf-8"}, _HTML_200)
        else:
            result = getattr(self, f"_{endpoint}")(params, outcome)
            if outcome == "timeout_after_processing":
                result = requests.exceptions.ReadTimeout("Read timed out (fake Khalti).")
        call = KhaltiCall(
            endpoint=endpoint,
            method=request.method,
            url=request.url,
            params=params,
            authorized=authorized,
            outcome="answer" if answer is not None else outcome,
            status_code=None if isinstance(result, BaseException) else result[0],
            choice=choice,
        )
        self.calls.append(call)
        if choice is not None:
            choice.calls.append(call)
        if isinstance(result, BaseException):
            raise result
        return result

    @staticmethod
    def _params(request: _Request) -> Any:
        if request.method == "GET":
            return dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))
        body = request.body or b""
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        content_type = request.headers.get("Content-Type", "")
        if "json" in content_type:
            try:
                return json.loads(body or "{}")
            except ValueError:
                return body
        return dict(parse_qsl(body, keep_blank_values=True))

    def _keys(self, params: dict[str, Any]) -> set[str]:
        """Every name of the payment a call is about, for choices made by ``key``."""
        given = {
            str(params[name])
            for name in ("token", "idx", "pidx", "purchase_order_id")
            if params.get(name) is not None
        }
        keys = set(given)
        for value in given:
            payment = self._payment(value)
            if payment is not None:
                keys |= {payment.token, payment.idx}
            epayment = self.epayments.get(value) or self._epayment_by_transaction(value)
            if epayment is not None:
                keys |= {epayment.pidx, epayment.transaction_id or epayment.pidx}
        return keys

    def _payment(self, token_or_idx: str) -> KhaltiFakePayment | None:
        if token_or_idx in self.payments:
            return self.payments[token_or_idx]
        return next((p for p in self.payments.values() if p.idx == token_or_idx), None)

    def _epayment_by_transaction(self, transaction_id: str) -> KhaltiFakeEpayment | None:
        return next(
            (e for e in self.epayments.values() if e.transaction_id == transaction_id), None
        )

    # --- the endpoints -------------------------------------------------------------------

    def _verify(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        token, amount = params.get("token"), _as_int(params.get("amount"))
        payment = self.payments.get(token) if isinstance(token, str) else None
        if outcome == "rejected":
            return _json(400, _INVALID_TOKEN)
        if (
            payment is None
            or amount != payment.amount
            or payment.state != "Completed"
            or payment.verified
        ):
            return _json(400, _INVALID_TOKEN)
        if outcome == "wrong_amount":
            return _json(200, payment.record(amount=payment.amount + 100))
        payment.verified = True
        return _json(200, payment.record())

    def _status(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        token = params.get("token")
        payment = self._payment(token) if isinstance(token, str) else None
        state = "Error"
        if (
            payment is not None
            and _as_int(params.get("amount")) == payment.amount
            and outcome not in ("rejected", "wrong_amount")
        ):
            state = payment.status_state
        ok, detail = _STATUS_ANSWERS[state]
        return _json(200, {"status": ok, "state": state, "detail": detail})

    def _transaction(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        idx = params["idx"]
        payment = self._payment(idx)
        if (
            outcome != "rejected"
            and payment is not None
            and payment.idx == idx
            and payment.verified
        ):
            return _json(
                200,
                payment.record(amount=payment.amount + 100 if outcome == "wrong_amount" else None),
            )
        epayment = self._epayment_by_transaction(idx)
        if (
            outcome != "rejected"
            and epayment is not None
            and epayment.status in ("Completed", "Refunded", "Partially Refunded")
        ):
            return _json(200, epayment.record())
        return _json(404, _NOT_FOUND)

    def _refund(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        if outcome == "rejected":
            return _json(400, {"detail": "Refund period expired."})
        idx = params["idx"]
        amount, mobile = params.get("amount"), params.get("mobile")
        payment = self._payment(idx)
        epayment = self._epayment_by_transaction(idx)
        holder: KhaltiFakePayment | KhaltiFakeEpayment
        if payment is not None and payment.idx == idx:
            holder, refundable = (
                payment,
                payment.verified and payment.state in ("Completed", "Partially refunded"),
            )
        elif epayment is not None:
            holder, refundable = epayment, epayment.status in ("Completed", "Partially Refunded")
        else:
            return _json(404, _NOT_FOUND)
        if not refundable:
            return _json(400, {"detail": "This transaction cannot be refunded."})
        remaining = holder.amount - holder.refunded_amount
        if amount is None:
            amount = remaining
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= remaining:
            return _json(400, {"detail": "Refund amount is more than the refundable amount."})
        holder.refunded_amount += amount
        holder.refunds.append((amount, mobile))
        full = holder.refunded_amount >= holder.amount
        if isinstance(holder, KhaltiFakePayment):
            holder.state = "Refunded" if full else "Partially refunded"
        else:
            holder.status = "Refunded" if full else "Partially Refunded"
        return _json(200, {"detail": "Transaction refund successful."})

    def _initiate(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        if outcome == "rejected":
            return _json(
                400,
                {
                    "detail": "The merchant cannot start this payment.",
                    "error_key": "validation_error",
                },
            )
        errors: dict[str, list[str]] = {}
        for name in (
            "return_url",
            "website_url",
            "amount",
            "purchase_order_id",
            "purchase_order_name",
        ):
            if params.get(name) in (None, ""):
                errors[name] = ["This field is required."]
        amount: Any = params.get("amount")  # the app's JSON, checked as Khalti would
        if "amount" not in errors and (isinstance(amount, bool) or not isinstance(amount, int)):
            errors["amount"] = ["A valid integer is required."]
        elif "amount" not in errors and amount < 1000:
            errors["amount"] = ["Amount should be greater than Rs. 10, that is 1000 paisa."]
        for name in ("return_url", "website_url"):
            value = params.get(name)
            if name not in errors and not (
                isinstance(value, str) and value.startswith(("http://", "https://"))
            ):
                errors[name] = ["Enter a valid URL."]
        breakdown = params.get("amount_breakdown")
        if "amount" not in errors and breakdown:
            total = sum(part.get("amount", 0) for part in breakdown if isinstance(part, dict))
            if total != amount:
                errors["amount"] = ["Amount Breakdown's total doesn't match with the amount."]
        if errors:
            return _json(400, {**errors, "error_key": "validation_error"})
        epayment = self.add_epayment(
            amount=amount,
            purchase_order_id=str(params["purchase_order_id"]),
            purchase_order_name=str(params["purchase_order_name"]),
            return_url=params["return_url"],
        )
        epayment.website_url = params["website_url"]
        epayment.request = params
        return _json(
            200,
            {
                "pidx": epayment.pidx,
                "payment_url": epayment.payment_url,
                "expires_at": epayment.expires_at.isoformat() if epayment.expires_at else None,
                "expires_in": self.EPAYMENT_LINK_SECONDS,
            },
        )

    def _lookup(self, params: dict[str, Any], outcome: str | None) -> _Answer:
        # Any JSON value: one that is no pidx finds nothing (a list fails, as before).
        epayment = self.epayments.get(params.get("pidx"))  # type: ignore[arg-type]
        if epayment is None or outcome == "rejected":
            return _json(404, {**_NOT_FOUND, "error_key": "validation_error"})
        if (
            epayment.status == "Initiated"
            and epayment.expires_at is not None
            and epayment.expires_at <= django_timezone.now()
        ):
            epayment.status = "Expired"
        total = epayment.amount + 100 if outcome == "wrong_amount" else None
        body = epayment.lookup_body(total_amount=total)
        if outcome == "wrong_amount":
            body["status"] = "Completed"
            body["transaction_id"] = epayment.transaction_id or khalti_id()
        return _json(400 if body["status"] in EPAYMENT_400 else 200, body)


def _dumps(value: object) -> str:
    return json.dumps(value)


def _json(status: int, body: object) -> _Answer:
    return status, {"Content-Type": "application/json"}, _dumps(body)


def _http_answer(
    status: int, json: object, body: str | None, headers: dict[str, str] | None = None
) -> _Answer:
    content_type = "application/json" if body is None else "text/html; charset=utf-8"
    text = body if body is not None else _dumps(json)
    return status, {"Content-Type": content_type, **(headers or {})}, text
