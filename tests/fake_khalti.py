"""A fake Khalti on a real loopback socket, for tests that cross processes.

``responses`` patches ``requests`` inside one process only; when several
worker processes verify at once, they need a real server to talk to. This one
answers the verify and status endpoints like Khalti does, counts the calls it
receives per token, and can be told to answer slowly.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SECRET = "test_secret_key_testproject"


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


class FakeKhalti:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: Counter[tuple[str, str]] = Counter()
        self.verified: dict[str, int] = {}
        #: The status endpoint's state per token; default: Complete once verified,
        #: Confirmed (paid, awaiting verification) before.
        self.states: dict[str, str] = {}
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.answer(self, "verify", body)

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                fake.answer(self, "status", query)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKhalti:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, handler: BaseHTTPRequestHandler, endpoint: str, params: dict) -> None:
        token = str(params.get("token", ""))
        with self._lock:
            self.calls[(endpoint, token)] += 1
        if handler.headers.get("Authorization") != f"Key {SECRET}":
            return self._send(handler, 401, {"detail": "Invalid token."})
        time.sleep(self.delay)
        amount = int(params.get("amount", 0))
        if endpoint == "verify":
            with self._lock:
                self.verified[token] = amount
            return self._send(handler, 200, completed_record(token, amount))
        state = self.states.get(token) or ("Complete" if token in self.verified else "Confirmed")
        return self._send(handler, 200, {"status": True, "state": state, "detail": state})

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def count(self, endpoint: str, token: str | None = None) -> int:
        return sum(n for (e, t), n in self.calls.items() if e == endpoint and token in (None, t))
