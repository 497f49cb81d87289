"""What the app asked the fake Khalti, and the answers chosen ahead.

:class:`KhaltiCall` records each request; :class:`KhaltiChoice` is an answer
chosen with :meth:`~KhaltiFake.fail_next`, :meth:`~KhaltiFake.answer_next` or
:meth:`~KhaltiFake.on_next`. :class:`_Choosing` and :class:`_CallRecords` are
the parts of :class:`~django_khalti.testing.KhaltiFake` that make the choices
and list the calls.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..rules.answers import Answer

#: Khalti's endpoints: name, method and path under ``BASE_URL``.
ENDPOINTS: dict[str, tuple[str, re.Pattern[str]]] = {
    "verify": ("POST", re.compile(r"api/v2/payment/verify/")),
    "status": ("GET", re.compile(r"api/v2/payment/status/")),
    "transaction": ("GET", re.compile(r"api/v2/merchant-transaction/(?P<idx>[^/]+)/")),
    "refund": ("POST", re.compile(r"api/merchant-transaction/(?P<idx>[^/]+)/refund/")),
    "initiate": ("POST", re.compile(r"api/v2/epayment/initiate/")),
    "lookup": ("POST", re.compile(r"api/v2/epayment/lookup/")),
    "transactions": ("GET", re.compile(r"api/v2/merchant-transaction/")),
}
#: Other paths at which Khalti answers an endpoint: its older page names.
OLDER_PATHS: dict[str, tuple[str, re.Pattern[str]]] = {
    "transactions": ("GET", re.compile(r"api/merchant-transaction/")),
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


@dataclass(frozen=True)
class _Asked:
    """What a request to the fake Khalti asked: the fields a call and a request share."""

    #: One of ``verify``, ``status``, ``transaction``, ``refund``, ``initiate``, ``lookup``,
    #: ``transactions``.
    endpoint: str
    method: str
    url: str
    #: The JSON or form body sent, or the query string for GET (plus ``idx`` taken
    #: from the URL for refund and transaction).
    params: dict[str, Any]


@dataclass(frozen=True)
class KhaltiCall(_Asked):
    """One request the app made to the fake Khalti."""

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
class KhaltiRequest(_Asked):
    """A request to the fake Khalti, as an :meth:`~KhaltiFake.on_next` callback sees it."""

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
    #: Khalti's 401 for the request's key (``None``: the key is the secret key).
    refusal: Answer | None
    choice: KhaltiChoice | None


def _as_int(value: Any) -> Any:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


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


class _Choosing:
    """The answers a test chooses ahead, for the next calls (part of :class:`KhaltiFake`)."""

    _overrides: list[KhaltiChoice]
    _lock: threading.RLock

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
        ``initiate``, ``lookup``, ``transactions`` (the transaction list), or ``any``. ``outcome``: one of
        :data:`OUTCOMES` (see the module's docstring). ``key`` limits it to one
        payment: a token, idx, pidx, transaction id or (initiate) purchase
        order id. ``times=None``: every call from now on. The first choice
        that fits a call is used. ``delay``: seconds to wait before answering
        (a slow Khalti; other calls are answered meanwhile). Returns the
        :class:`KhaltiChoice`, whose ``calls`` are the calls it answered.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"Unknown outcome {outcome!r}; one of {', '.join(sorted(OUTCOMES))}.")
        if outcome == "wrong_amount" and endpoint in ("refund", "initiate", "transactions"):
            raise ValueError(
                "wrong_amount is an answer of verify, status, transaction or lookup "
                "(for the transaction list, change Khalti's amount: khalti.set_amount(...))."
            )
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
        if override.endpoint == "transactions" and override.key is not None:
            raise ValueError(
                "key= picks one payment's calls; a page of the transaction list is of no "
                "one payment: leave key out."
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


class _CallRecords:
    """The calls the app made, as lists a test compares (part of :class:`KhaltiFake`)."""

    calls: list[KhaltiCall]
    _lock: threading.RLock

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
    def transactions_calls(self) -> list[Any]:
        """Every transaction-list call (either path): the page asked for, an int
        (1 when the query names none; as sent when it is no integer).
        """
        return [_as_int(c.params.get("page", 1)) for c in self._calls("transactions")]

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
