"""A request in, an answer out: how the fake Khalti answers on ``responses``.

Each request is matched to its endpoint at ``BASE_URL``, its key checked, an
answer chosen ahead taken (:mod:`.calls`), and, failing one, Khalti's own
answer given by its state (:mod:`.endpoints`); the call is then recorded. A
slow or computed answer (a ``delay``, a callback) is given in a thread of its
own, which the call waits for until its deadline, as a real Khalti answers in
its own time (:func:`_in_its_own_time`).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import requests

from ..client import deadline
from ..conf import khalti_settings
from ..rules.answers import authorize
from .calls import (
    OUTCOMES,
    KhaltiCall,
    KhaltiChoice,
    KhaltiRequest,
    _Answer,
    _http_answer,
    _json,
    _Received,
    _Request,
)
from .endpoints import _Endpoints

_HTML_500 = "<!doctype html><html><body><h1>Server Error (500)</h1></body></html>"
_HTML_200 = "<!doctype html><html><body><h1>Khalti is under maintenance</h1></body></html>"


class _Answering(_Endpoints):
    """How :class:`KhaltiFake` answers each request (part of it)."""

    secret_key: str | None
    calls: list[KhaltiCall]
    _lock: threading.RLock

    if TYPE_CHECKING:  # pragma: no cover

        @property
        def base_url(self) -> str: ...

        def _take_override(
            self, endpoint: str, keys: set[str], transport_only: bool
        ) -> KhaltiChoice | None: ...

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
            if choice is not None and (choice.delay or choice.callback is not None):
                return _in_its_own_time(lambda: self._answer(received))
            return self._answer(received)

        return callback

    def _answer(self, received: _Received) -> _Answer:
        choice, request = received.choice, received.request
        chosen: Any = None
        if choice is not None and choice.delay:
            time.sleep(choice.delay)
        if choice is not None and choice.callback is not None:
            try:
                chosen = choice.callback(
                    KhaltiRequest(
                        endpoint=received.endpoint,
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
        refusal = authorize(authorization, known)
        choice = self._take_override(endpoint, keys, transport_only=refusal is not None)
        return _Received(endpoint, request, params, refusal is None, refusal, choice)

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
        elif received.refusal is not None:
            result = _json(received.refusal.status, received.refusal.body)
        elif outcome == "unauthorized":
            result = _json(401, {"detail": "Invalid token."})
        elif outcome == "server_error":
            result = (500, {"Content-Type": "text/html; charset=utf-8"}, _HTML_500)
        elif outcome == "not_json":
            result = (200, {"Content-Type": "text/html; charset=utf-8"}, _HTML_200)
        else:
            result = (
                self._transactions(params, outcome, request.url)
                if endpoint == "transactions"
                else getattr(self, f"_{endpoint}")(params, outcome)
            )
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


def _in_its_own_time(answer: Callable[[], _Answer]) -> _Answer:
    """A slow or computed answer, given in a thread of its own, as a real Khalti
    answers in its own time: the call waits for it until its deadline (a
    ``ReadTimeout`` then), and Khalti goes on with it meanwhile, as it would.

    ``responses`` answers in the calling thread, where no socket of the call's
    can be cut at its deadline: without this, a ``delay`` past ``TIMEOUT``
    would hold the call, and Khalti would act before the caller gave up.
    """
    call = deadline.current()
    if call is None:  # not a call of dj-khalti's client: no deadline to keep
        return answer()
    given: Future[_Answer] = Future()

    def give() -> None:
        try:
            given.set_result(answer())
        except BaseException as exc:  # raised in the call, as responses would
            given.set_exception(exc)

    threading.Thread(target=give, name="fake Khalti answering", daemon=True).start()
    try:
        return given.result(max(call.deadline - time.monotonic(), 0))
    except FutureTimeout:
        raise requests.exceptions.ReadTimeout("Read timed out (fake Khalti).") from None
