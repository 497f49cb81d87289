"""A fake Khalti on a real loopback socket, for tests that cross processes.

``responses`` patches ``requests`` inside one process only; when several
worker processes verify at once (gunicorn workers, spawned processes), they
need a real server to talk to, so that the app's real client, connection pool
and timeouts are exercised. This one answers the verify and status endpoints
like Khalti does, on 127.0.0.1 only, from a daemon thread that stops at the
end of its ``with`` block.

What it knows, like Khalti:

- ``issue(token, amount)``: the buyer paid ``amount`` with ``token``. Verifying
  an issued token for another amount is refused (400), as Khalti does; a token
  never issued is accepted for any amount (the older tests' behaviour).
- ``completions[token]``: how many times Khalti actually *completed* (moved the
  money for) a verification. More than one for a token is a double
  verification; the fake answers a second one with Khalti's refusal.
- the status endpoint answers ``Complete`` once a token's verification was
  completed and ``Confirmed`` (paid, awaiting verification) before, unless
  ``states[token]`` says otherwise.

Faults, switched per token with ``fault(token, mode)`` and cleared with
``clear(token)`` (they apply to every endpoint asked about the token). Those of
the testing kit's outcomes (``django_khalti.testing.OUTCOMES``, the outcomes of
``KhaltiFake.fail_next``) that this fake plays carry the kit's name and mean what
they mean there, on a real socket (:data:`KIT_OUTCOMES`):

============================  ==================================================
``rejected``                   verify: 400 ``{"token": ["Invalid token."]}``;
                               status: ``Error``
``wrong_amount``               verify completes and answers a record for
                               ``amount`` (default: the issued amount, else the
                               asked amount - 100)
``timeout_after_processing``   the verification is completed at once (Khalti
                               did it), then the answer waits ``slow_for``
                               seconds (longer than the app's TIMEOUT): lost
``connection_error``           the socket is closed with a TCP reset before
                               Khalti did anything: no answer
``server_error``               500 with an HTML page
``unauthorized``               401 ``{"detail": "Invalid token."}``
============================  ==================================================

The kit's ``timeout`` and ``not_json`` are not played here. The faults of this
fake alone (:data:`RIG_FAULTS`), which the kit has no outcome for:

============================  ==================================================
``reset_after_processing``     verify completes, then the socket is closed with
                               a TCP reset before the answer (status: reset)
``truncated_json``             200 whose JSON body is cut short (verify
                               completes first)
``amount_as_string``           200 with ``"amount": "1000"`` (a string)
``no_state``                   200 without ``state``
``hold``                       completes (if ``complete``), sets ``holding``,
                               then waits for ``release`` (bounded) before
                               answering
``processing``                 Khalti is slow to process a verify: it completes
                               it only after ``slow_for`` seconds (the status
                               endpoint says Confirmed meanwhile); a second
                               verify of the token meanwhile waits for the
                               first, then is refused as a repeat ("Token
                               already used.")
============================  ==================================================

Every call is counted per endpoint and token (``count``), with the caller's
address (``peers``), so a test can find the worker process that is asking.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from django_khalti.testing import OUTCOMES

SECRET = "test_secret_key_testproject"

#: The kit's outcomes this fake plays, by the kit's names (see the module's docstring).
KIT_OUTCOMES = OUTCOMES - {"timeout", "not_json"}
#: The faults of this fake alone: the kit has no outcome for them.
RIG_FAULTS = frozenset(
    {
        "reset_after_processing",
        "truncated_json",
        "amount_as_string",
        "no_state",
        "hold",
        "processing",
    }
)
FAULTS = KIT_OUTCOMES | RIG_FAULTS
#: How long a held answer waits for ``release`` at most: the fake stops by itself.
HOLD_LIMIT = 30.0


def completed_record(token: str, amount: int) -> dict:
    return {
        "idx": f"idx-{token}",
        "type": {"idx": "t", "name": "Wallet payment"},
        "state": {"idx": "s", "name": "Completed", "template": "is complete"},
        "amount": amount,
        "fee_amount": 30,
        "refunded": False,
        "user": {"idx": "u", "name": "Test User", "mobile": "98XXXXXXX9"},
    }


@dataclass
class Fault:
    mode: str
    #: Whether Khalti completed the verification before the fault hit (``hold`` only;
    #: the other faults' names say it).
    complete: bool = True
    amount: int | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many gunicorn workers may connect at once.
    request_queue_size = 256

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a reset or a caller that gave up: expected here, not worth a traceback


class FakeKhalti:
    def __init__(self, delay: float = 0.0, slow_for: float = 3.5) -> None:
        #: Seconds every verify call takes before Khalti acts on it.
        self.delay = delay
        self.slow_for = slow_for
        self.calls: Counter[tuple[str, str]] = Counter()
        self.verified: dict[str, int] = {}
        self.completions: Counter[str] = Counter()
        self.issued: dict[str, int] = {}
        self.faults: dict[str, Fault] = {}
        self.peers: defaultdict[str, list[tuple[str, int]]] = defaultdict(list)
        #: The status endpoint's state per token; default: Complete once verified,
        #: Confirmed (paid, awaiting verification) before.
        self.states: dict[str, str] = {}
        #: Tokens whose verify Khalti is processing right now (mode ``processing``).
        self.processing: dict[str, threading.Event] = {}
        self.holding = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Khalti: the app's pool is used
            # Headers and body leave in one write (a buffered wfile, flushed once per
            # answer), with TCP_NODELAY: otherwise Nagle's algorithm holds the body back
            # until the client's delayed ACK of the headers (about 40 ms).
            disable_nagle_algorithm = True
            wbufsize = -1

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                fake.answer(self, "verify", body if isinstance(body, dict) else {})

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if "/merchant-transaction/" in url.path:
                    idx = url.path.rstrip("/").rsplit("/", 1)[-1]
                    return fake.transaction(self, idx)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.answer(self, "status", query)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKhalti:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    # --- the test's controls ------------------------------------------------------

    def issue(self, token: str, amount: int) -> str:
        """The buyer paid ``amount`` with ``token``: only that amount verifies."""
        self.issued[token] = amount
        return token

    def fault(
        self, token: str, mode: str, *, complete: bool = True, amount: int | None = None
    ) -> None:
        if mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r}; one of {', '.join(sorted(FAULTS))}")
        self.faults[token] = Fault(mode, complete, amount)

    def clear(self, token: str | None = None) -> None:
        """Khalti is well again: for ``token``, or for every token."""
        if token is None:
            self.faults.clear()
        else:
            self.faults.pop(token, None)

    def reset(self) -> None:
        """Forget every call, token and fault (between tests sharing one fake)."""
        with self._lock:
            for record in (
                self.calls,
                self.verified,
                self.completions,
                self.issued,
                self.faults,
                self.peers,
                self.states,
                self.processing,
            ):
                record.clear()
        self.holding.clear()
        self.release.clear()

    def token_of(self, token_or_idx: str) -> str:
        """The token a status question is about: Khalti's status endpoint takes a token
        *or* the idx of a completed transaction (``idx-<token>`` here)."""
        if token_or_idx.startswith("idx-") and token_or_idx[4:] in self.verified:
            return token_or_idx[4:]
        return token_or_idx

    def transaction(self, handler: BaseHTTPRequestHandler, idx: str) -> None:
        """Khalti's transaction record by idx: only a verified (completed) one exists."""
        with self._lock:
            self.calls[("transaction", idx)] += 1
        if handler.headers.get("Authorization") != f"Key {SECRET}":
            return self._send(handler, 401, {"detail": "Invalid token."})
        token = idx[4:] if idx.startswith("idx-") else None
        if token is None or token not in self.verified:
            return self._send(handler, 404, {"detail": "Not found."})
        return self._send(handler, 200, completed_record(token, self.verified[token]))

    def count(self, endpoint: str, token: str | None = None) -> int:
        return sum(n for (e, t), n in self.calls.items() if e == endpoint and token in (None, t))

    # --- the server's side ----------------------------------------------------------

    def answer(self, handler: BaseHTTPRequestHandler, endpoint: str, params: dict) -> None:
        token = str(params.get("token", ""))
        with self._lock:
            self.calls[(endpoint, token)] += 1
            self.peers[token].append(handler.client_address)
        if handler.headers.get("Authorization") != f"Key {SECRET}":
            return self._send(handler, 401, {"detail": "Invalid token."})
        if endpoint == "verify":
            time.sleep(self.delay)  # verify takes a while; the status endpoint answers at once
        try:
            amount = int(params.get("amount", 0))
        except (TypeError, ValueError):
            amount = 0
        fault = self.faults.get(token)
        mode = fault.mode if fault else None

        if mode == "rejected" and endpoint == "status":
            # Khalti's status for a payment it refuses: not found.
            return self._send(
                handler,
                200,
                {"status": False, "state": "Error", "detail": "Transaction not found."},
            )
        if mode == "rejected":
            return self._send(handler, 400, {"token": ["Invalid token."]})
        if mode == "unauthorized":
            return self._send(handler, 401, {"detail": "Invalid token."})
        if mode == "server_error":
            return self._send_raw(
                handler, 500, b"<html><body><h1>Server Error (500)</h1></body></html>", "text/html"
            )
        if mode == "connection_error" or (
            mode == "reset_after_processing" and endpoint != "verify"
        ):
            return self._reset(handler)

        if endpoint == "status":
            return self._status(handler, self.token_of(token), mode, amount)

        if mode == "processing":
            return self._process(handler, token, amount)

        # verify: refuse what Khalti would refuse, else complete it (once).
        issued = self.issued.get(token)
        if issued is not None and issued != amount and mode != "wrong_amount":
            return self._send(handler, 400, {"amount": ["Amount does not match."]})
        with self._lock:
            if self.completions[token] and mode is None:
                self.completions[token] += 1  # a double verification: the test will see it
                refuse = True
            else:
                refuse = False
                if not (mode in ("hold",) and not fault.complete):
                    self.completions[token] += 1
                    self.verified[token] = amount
        if refuse:
            return self._send(handler, 400, {"token": ["Token already used."]})
        record = completed_record(token, amount)
        if mode == "wrong_amount":
            record["amount"] = (
                fault.amount
                if fault.amount is not None
                else (issued if issued is not None else amount - 100)
            )
        elif mode == "timeout_after_processing":
            time.sleep(self.slow_for)
        elif mode == "reset_after_processing":
            return self._reset(handler)
        elif mode == "hold":
            # Without ``complete``, Khalti never got to it: nothing is completed.
            self.holding.set()
            self.release.wait(HOLD_LIMIT)
        elif mode == "truncated_json":
            text = json.dumps(record).encode()
            return self._send_raw(handler, 200, text[: len(text) // 2], "application/json")
        elif mode == "amount_as_string":
            record["amount"] = str(amount)
        elif mode == "no_state":
            del record["state"]
        return self._send(handler, 200, record)

    def _process(self, handler: BaseHTTPRequestHandler, token: str, amount: int) -> None:
        """A verify Khalti completes only after ``slow_for`` seconds; a repeat meanwhile
        waits for it and is refused."""
        with self._lock:
            first = self.processing.get(token)
            if first is None and not self.completions[token]:
                self.processing[token] = done = threading.Event()
        if first is not None or self.completions[token]:
            if first is not None:
                first.wait(HOLD_LIMIT)
            return self._send(handler, 400, {"token": ["Token already used."]})
        time.sleep(self.slow_for)
        with self._lock:
            self.completions[token] += 1
            self.verified[token] = amount
        done.set()
        return self._send(handler, 200, completed_record(token, amount))

    def _status(
        self,
        handler: BaseHTTPRequestHandler,
        token: str,
        mode: str | None,
        amount: int | None = None,
    ) -> None:
        if mode == "timeout_after_processing":
            time.sleep(self.slow_for)
        elif mode == "hold":
            self.holding.set()
            self.release.wait(HOLD_LIMIT)
        known = self.verified.get(token, self.issued.get(token))
        if known is not None and amount is not None and amount != known:
            # Khalti: "Transaction not found" for an unknown token *or a wrong amount*.
            return self._send(
                handler,
                200,
                {"status": False, "state": "Error", "detail": "Transaction not found."},
            )
        state = self.states.get(token) or ("Complete" if token in self.verified else "Confirmed")
        body: dict = {"status": True, "state": state, "detail": state}
        if mode == "truncated_json":
            text = json.dumps(body).encode()
            return self._send_raw(handler, 200, text[: len(text) // 2], "application/json")
        if mode == "no_state":
            del body["state"]
        return self._send(handler, 200, body)

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: dict) -> None:
        self._send_raw(handler, status, json.dumps(body).encode(), "application/json")

    @staticmethod
    def _send_raw(
        handler: BaseHTTPRequestHandler, status: int, data: bytes, content_type: str
    ) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True  # the caller gave up (timeout, killed worker)

    @staticmethod
    def _reset(handler: BaseHTTPRequestHandler) -> None:
        """Drop the connection with a TCP reset, answering nothing."""
        handler.close_connection = True
        sock = handler.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # close(2) now, with linger 0: a reset. (sock.close() would wait for the
            # handler's file objects to let go of the socket.)
            os.close(sock.detach())
        except OSError:
            pass
