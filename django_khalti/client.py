"""HTTP and Khalti's wire format: one method per endpoint.

The client never touches the ORM, DRF or signals. Every call is bounded by
``TIMEOUT`` (connect and read), goes through one pooled ``requests.Session``
per process, and turns every transport failure into a typed exception raised
``from`` its cause. The secret key travels only in the ``Authorization``
header of each request; it is never stored on the session, logged or put in
an exception.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Timeout

from . import __version__
from .conf import khalti_settings
from .exceptions import (
    KhaltiBadResponse,
    KhaltiConfigurationError,
    KhaltiConnectionError,
    KhaltiRejected,
    KhaltiTimeout,
    KhaltiUnavailable,
)

logger = logging.getLogger(__name__)

USER_AGENT = f"dj-khalti/{__version__}"
MOBILE_MAX_LENGTH = 32  # Payment.mobile
POOL_MAXSIZE = 32

VERIFY_PATH = "api/v2/payment/verify/"
STATUS_PATH = "api/v2/payment/status/"
TRANSACTION_PATH = "api/v2/merchant-transaction/{idx}/"
REFUND_PATH = "api/merchant-transaction/{idx}/refund/"


@functools.cache
def get_session() -> requests.Session:
    """The process-wide session: kept-alive, pooled connections to Khalti."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_MAXSIZE, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


@dataclass(frozen=True)
class KhaltiTransaction:
    """Khalti's transaction record, as the verify endpoint returns it."""

    idx: str
    state: str
    amount: int
    fee_amount: int | None
    mobile: str
    refunded: bool
    raw: dict[str, Any]


@dataclass(frozen=True)
class KhaltiStatus:
    """The answer of the status endpoint: ``state`` decides, ``status`` does not."""

    state: str
    detail: str
    raw: dict[str, Any]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def error_message(body: Any) -> str | None:
    """The human message of a Khalti error body, or None for an unknown shape.

    Khalti answers errors as ``{"detail": "..."}`` or as DRF field errors
    ``{"token": ["Invalid token."]}``.
    """
    if not isinstance(body, dict) or not body:
        return None
    detail = body.get("detail")
    if isinstance(detail, str):
        return detail
    messages = []
    for field, errors in body.items():
        if field == "error_key":
            continue
        if isinstance(errors, str):
            errors = [errors]
        if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
            return None
        messages.append(f"{field}: {' '.join(errors)}")
    return "; ".join(messages) or None


class KhaltiClient:
    def __init__(self, secret_key: str, base_url: str, timeout: float) -> None:
        if not secret_key or not isinstance(secret_key, str):
            raise KhaltiConfigurationError("KHALTI['SECRET_KEY'] is not set.")
        if not isinstance(base_url, str) or not base_url.startswith(("https://", "http://")):
            raise KhaltiConfigurationError("KHALTI['BASE_URL'] must be an http(s) URL.")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise KhaltiConfigurationError("KHALTI['TIMEOUT'] must be a positive number.")
        self._secret_key = secret_key
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout = float(timeout)

    @classmethod
    def from_settings(cls) -> KhaltiClient:
        return cls(
            secret_key=khalti_settings.SECRET_KEY,
            base_url=khalti_settings.BASE_URL,
            timeout=khalti_settings.TIMEOUT,
        )

    def __repr__(self) -> str:
        return f"<KhaltiClient {self.base_url} timeout={self.timeout}>"

    # --- endpoints ---------------------------------------------------------

    def verify(self, token: str, amount: int) -> KhaltiTransaction:
        """Verify a widget payment. Moves the buyer's money: never call it twice blindly.

        Raises :class:`KhaltiRejected` when Khalti refuses the token (HTTP 400),
        :class:`KhaltiUnavailable` when the outcome is unknown.
        """
        status, body = self._request(
            "POST", VERIFY_PATH, json={"token": token, "amount": amount}
        )
        if status != 200:
            raise self._refusal(status, body)
        return self._transaction(body)

    def status(self, token: str, amount: int) -> KhaltiStatus:
        """Ask what became of a widget payment. Read-only: safe after an unknown outcome."""
        status, body = self._request(
            "GET", STATUS_PATH, params={"token": token, "amount": amount}
        )
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

    def transaction(self, idx: str) -> KhaltiTransaction:
        """Khalti's record of one transaction, by its ``idx``. Read-only."""
        status, body = self._request("GET", TRANSACTION_PATH.format(idx=quote(idx, safe="")))
        if status != 200:
            raise self._refusal(status, body)
        return self._transaction(body, plain_state=True)

    def refund(self, idx: str, amount: int | None = None, mobile: str | None = None) -> dict[str, Any]:
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
        if status == 200 and isinstance(answer, dict):
            return answer
        raise self._refusal(status, answer, any_4xx=True)

    # --- plumbing ----------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        url = urljoin(self.base_url, path)
        started = time.monotonic()
        try:
            response = get_session().request(
                method,
                url,
                headers={"Authorization": f"Key {self._secret_key}"},
                # Connect and each read within TIMEOUT, and the whole call too: a
                # trickling answer cannot keep a worker (and a claim) past it.
                timeout=Timeout(connect=self.timeout, read=self.timeout, total=self.timeout),
                allow_redirects=False,
                **kwargs,
            )
        except requests.Timeout as exc:
            raise KhaltiTimeout() from exc
        except requests.ConnectionError as exc:
            raise KhaltiConnectionError() from exc
        except requests.RequestException as exc:
            raise KhaltiUnavailable() from exc
        logger.debug(
            "Khalti %s %s answered HTTP %s in %.0f ms",
            method,
            path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        if response.status_code in (401, 403):
            logger.error(
                "Khalti refused our credentials (HTTP %s): check KHALTI['SECRET_KEY'].",
                response.status_code,
            )
            raise KhaltiBadResponse()
        if response.status_code == 429 or response.status_code >= 500:
            raise KhaltiUnavailable()
        try:
            body = response.json()
        except ValueError as exc:
            logger.warning("Khalti %s %s answered with a body that is not JSON.", method, path)
            raise KhaltiBadResponse() from exc
        return response.status_code, body

    def _refusal(self, status: int, body: Any, any_4xx: bool = False) -> Exception:
        """A definitive refusal for a readable HTTP 400, an unknown outcome otherwise.

        With ``any_4xx``, any readable 4xx answer is a refusal (refunds: Khalti
        documents their failures only as "non-200 with a detail").
        """
        message = error_message(body)
        if message and (status == 400 or (any_4xx and 400 <= status < 500)):
            return KhaltiRejected(message, status_code=status, body=body)
        logger.warning("Khalti answered HTTP %s with a body of an unknown shape.", status)
        return KhaltiBadResponse()

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
