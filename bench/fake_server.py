"""The bench's Khalti: ``tests.fake_khalti.FakeKhalti`` over HTTPS, in its own process.

Run by ``bench/run.py``: ``python bench/fake_server.py CERT KEY DELAY``. Prints the
base URL on its first line of output, then serves until its standard input closes
(the bench ending, however it ends) or SIGTERM. Its own process, so that the load
generator's threads do not share a GIL with it.

``khalti_reconcile``'s bench: a token ``rec-...`` is a payment Khalti completed whose
answer the shop never saw. Asked about it, the status endpoint answers ``Complete``
and the transaction endpoint has its record under ``idx-<token>`` (the idx the buyer's
page reported: the bench stores it as the payment's ``claimed_idx``), for the amount
the status question names. ``/ledger-<N>-<YYYYMMDD>/...merchant-transaction/`` is the
ledger walk's bench: a transaction list of N records (``bench/ledger.py``). Verify accepts any fresh token for any amount, after ``DELAY`` seconds, in a
JSON body (dj-khalti, the naive baseline) or a form-encoded one (the peer
``django-khalti`` 1.0 posts ``requests.post(url, payload)``; Khalti takes both).
"""

from __future__ import annotations

import signal
import ssl
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ledger import LEDGER_PATH, ledger_page  # noqa: E402
from tests.fake_khalti import FakeKhalti  # noqa: E402
from tests.rig import _die_with_parent  # noqa: E402


def bench_handler(server) -> None:
    """Verify bodies form-encoded as well as JSON (the fake itself reads JSON only), and
    the reconcile bench's ``rec-`` tokens completed when the status endpoint is asked."""
    json_handler = server.RequestHandlerClass

    class Handler(json_handler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            listed = LEDGER_PATH.match(url.path)
            if listed:
                page = int(query["page"]) if query.get("page", "").isdigit() else 0
                status, body = ledger_page(int(listed["n"]), listed["day"], page)
                return self.server.fake._send(self, status, body)
            token = query.get("token", "")
            if "/merchant-transaction/" not in url.path and token.startswith("rec-"):
                self.server.fake.verified.setdefault(token, int(query.get("amount") or 0))
            return super().do_GET()

        def do_POST(self) -> None:
            if not self.headers.get("Content-Type", "").startswith(
                "application/x-www-form-urlencoded"
            ):
                return super().do_POST()
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            self.server.fake.answer(self, "verify", {k: v[0] for k, v in form.items()})

    server.RequestHandlerClass = Handler


def main() -> None:
    cert, key, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    _die_with_parent()
    fake = FakeKhalti(delay=delay)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = fake.server
    server.fake = fake
    bench_handler(server)
    # The handshake happens in each connection's own thread, not in the accept loop.
    server.socket = context.wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
    plain_finish = server.finish_request

    def finish_request(request, client_address):
        request.settimeout(10)
        request.do_handshake()
        request.settimeout(None)
        plain_finish(request, client_address)

    server.finish_request = finish_request
    url = fake.url.replace("http://", "https://")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with fake:
        print(url, flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait()


if __name__ == "__main__":
    main()
