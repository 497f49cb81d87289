"""The wall-clock deadline: the whole call, answer included, within TIMEOUT.

Against real sockets on 127.0.0.1: a call is made in its caller's thread and
the process's one watchdog cuts its sockets at its deadline; ``responses``
answers without a socket, which no deadline can cut.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import select
import signal
import socket
import threading
import time
import warnings

import pytest

from django_khalti.client import KhaltiClient, deadline
from django_khalti.exceptions import KhaltiTimeout

from .test_client import exception_chain

SECRET = "test_secret_key_for_the_client_tests_only"


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Answers with its headers at once, then the body one byte at a time."""

    protocol_version = "HTTP/1.1"
    every = 0.2
    in_headers = False

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"status": True, "state": "Complete", "detail": "x" * 200}).encode()
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            if not self.in_headers:
                self.wfile.write(head)
                self.wfile.flush()
            for byte in (head if self.in_headers else b"") + body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(self.every)
        except OSError:
            pass  # the client gave up: what the test wants


class _Quick(http.server.BaseHTTPRequestHandler):
    """Answers at once, or after ``wait-<seconds>`` seconds for that token; keeps the
    connection open, and records which client port each request came from."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once

    def log_message(self, *args):
        pass

    def do_GET(self):
        token = self.path.partition("token=")[2].partition("&")[0]
        if token.startswith("wait-"):
            time.sleep(float(token[5:]))
        self.server.peers.append(self.client_address[1])  # type: ignore[attr-defined]
        body = json.dumps({"status": True, "state": "Complete", "detail": "ok"}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True


@contextlib.contextmanager
def serving(handler):
    """An HTTP server on 127.0.0.1 for the block: its URL and the server."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.peers = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def quick():
    with serving(_Quick) as (url, server):
        yield url, server


@pytest.fixture
def trickling_khalti(request):
    in_headers = getattr(request, "param", False)
    with serving(type("Handler", (_Trickle,), {"in_headers": in_headers})) as (url, _):
        yield url


def ask(url, timeout, token="t"):
    """Ask Khalti at ``url`` for ``token``'s status: what that returned or raised, and
    the seconds it took."""
    started = time.monotonic()
    outcome: object
    try:
        outcome = KhaltiClient(SECRET, url, timeout).status(token, 1000)
    except Exception as exc:
        outcome = exc
    return outcome, time.monotonic() - started


def test_a_slow_answer_ends_the_call_at_the_deadline(quick):
    url, _ = quick
    outcome, took = ask(url, 0.3, "wait-1.5")
    assert isinstance(outcome, KhaltiTimeout)
    assert took < 0.6


@pytest.mark.parametrize("trickling_khalti", [False, True], ids=["body", "headers"], indirect=True)
def test_an_answer_trickled_byte_by_byte_ends_the_call_at_the_deadline(trickling_khalti):
    # Each byte comes well within the read timeout, so only a deadline on the
    # whole call can end it: requests' (connect, read) timeouts never would.
    outcome, took = ask(trickling_khalti, 1)
    assert isinstance(outcome, KhaltiTimeout)
    assert took < 1.3
    # The cut socket's error (requests' holds the request, the key in its headers)
    # is nowhere behind the timeout.
    assert exception_chain(outcome) == [outcome]


def test_calls_with_different_timeouts_each_end_at_their_own_deadline(trickling_khalti):
    """A call whose deadline comes before the one the watchdog sleeps until wakes it."""
    took = {}

    def record(timeout):
        took[timeout] = ask(trickling_khalti, timeout)

    threads = [threading.Thread(target=record, args=(t,)) for t in (1.5, 0.3, 0.8)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)  # the longest deadline is kept first
    for thread in threads:
        thread.join(5)
    assert sorted(took) == [0.3, 0.8, 1.5]
    for timeout, (outcome, seconds) in took.items():
        assert isinstance(outcome, KhaltiTimeout)
        assert timeout <= seconds < timeout + 0.3, (timeout, seconds)


def test_abandoned_calls_end_at_once_and_starve_no_later_call(trickling_khalti, quick):
    """Forty answers trickled byte by byte at once: each caller stops at its deadline
    (the watchdog cuts the sockets of each call), and a call to a healthy Khalti right
    after is answered at once."""
    outcomes = []
    threads = [
        threading.Thread(target=lambda: outcomes.append(ask(trickling_khalti, 0.3)))
        for _ in range(40)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert time.monotonic() - started < 2  # forty threads and connections started on two cores
    assert len(outcomes) == 40
    assert all(isinstance(outcome, KhaltiTimeout) for outcome, _ in outcomes)
    outcome, took = ask(quick[0], 0.3)
    assert outcome.state == "Complete"
    assert took < 0.3


def test_no_thread_is_started_per_call(quick, monkeypatch):
    client = KhaltiClient(SECRET, quick[0], timeout=2)
    client.status("tok", 1000)  # the connection (and its server's thread), the watchdog
    started = []
    start = threading.Thread.start

    def counted(thread):
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted)
    for _ in range(50):
        assert client.status("tok", 1000).state == "Complete"
    assert started == []
    assert [t.name for t in threading.enumerate()].count("dj-khalti watchdog") == 1


def test_the_watchdog_forgets_finished_calls(trickling_khalti, quick):
    """While one call trickles on, hundreds finish: none of them is kept for long."""
    stuck = threading.Thread(target=ask, args=(trickling_khalti, 1.5))
    stuck.start()
    time.sleep(0.1)
    client = KhaltiClient(SECRET, quick[0], timeout=2)
    for _ in range(300):
        client.status("tok", 1000)
    with deadline.watchdog.lock:
        kept = len(deadline.watchdog._heap)
    assert stuck.is_alive()  # its deadline, the earliest, still holds the others behind it
    assert kept <= 1 + 33  # the stuck call, and fewer finished ones than a sweep takes
    stuck.join(5)


def test_a_finished_calls_deadline_never_cuts_the_connection_the_next_call_reuses(quick):
    url, server = quick
    KhaltiClient(SECRET, url, timeout=0.3).status("tok", 1000)  # finished at once
    # The next call takes the same kept-alive connection and is still waiting for
    # its answer when the first call's deadline passes.
    assert KhaltiClient(SECRET, url, timeout=3).status("wait-0.6", 1000).state == "Complete"
    assert len(set(server.peers)) == 1  # one connection served both


def test_a_deadline_passing_as_a_call_finishes_cuts_no_other_calls_connection(quick, monkeypatch):
    """The first call's connection is back in the pool, and taken by a second call,
    before the first call is forgotten; its deadline passes meanwhile. The watchdog
    abandons it, and cuts nothing: its connection was released from it first."""
    url, server = quick
    forget = deadline._Watchdog.forget
    finishing = threading.Event()

    def late_forget(watchdog, call):
        if not finishing.is_set():
            finishing.set()
            time.sleep(0.6)  # past the first call's deadline
        forget(watchdog, call)

    monkeypatch.setattr(deadline._Watchdog, "forget", late_forget)
    first = threading.Thread(target=lambda: KhaltiClient(SECRET, url, 0.3).status("tok", 1))
    first.start()
    assert finishing.wait(5)
    second = KhaltiClient(SECRET, url, timeout=3).status("wait-0.6", 1000)
    first.join(5)
    assert second.state == "Complete"
    assert len(set(server.peers)) == 1


def test_a_forked_worker_keeps_deadlines_with_a_watchdog_of_its_own(trickling_khalti, quick):
    """gunicorn --preload forks its workers from a process that may have called
    Khalti: the child has none of its parent's threads, and starts its own watchdog."""
    KhaltiClient(SECRET, quick[0], timeout=2).status("tok", 1000)
    assert "dj-khalti watchdog" in [t.name for t in threading.enumerate()]
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # a threaded parent forks
        pid = os.fork()
    if pid == 0:  # pragma: no cover (the child: it reports through the pipe)
        code = 1
        try:
            outcome, took = ask(trickling_khalti, 0.3)
            answer = KhaltiClient(SECRET, quick[0], timeout=2).status("tok", 1000).state
            told = {"timeout": isinstance(outcome, KhaltiTimeout), "took": took}
            os.write(write, json.dumps({**told, "answer": answer}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 10)
        said = os.read(read, 4096) if ready else b""
    finally:
        os.close(read)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert ready, "the child's call was never cut"
    assert said, "the child failed"
    report = json.loads(said)
    assert report["timeout"], report
    assert report["took"] < 1.0, report
    assert report["answer"] == "Complete"


class _Resolver:
    """``khalti.test`` looked up as 127.0.0.1, the first time only after ``first``
    seconds; ``lookups``: when it was looked up."""

    def __init__(self):
        self.first = 1.0
        self.lookups: list[float] = []
        self.getaddrinfo = socket.getaddrinfo

    def __call__(self, host, port, *args, **kwargs):
        if host != "khalti.test":
            return self.getaddrinfo(host, port, *args, **kwargs)
        self.lookups.append(time.monotonic())
        if len(self.lookups) == 1:
            time.sleep(self.first)
        return self.getaddrinfo("127.0.0.1", port, *args, **kwargs)


@pytest.fixture
def resolver(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    resolve = _Resolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return resolve


def test_a_host_name_looked_up_too_slowly_ends_the_call_at_the_deadline(resolver, quick):
    url, server = quick[0].replace("127.0.0.1", "khalti.test"), quick[1]
    lookups = resolver.lookups
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(ask(url, 0.3))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert [type(outcome) for outcome, _ in outcomes] == [KhaltiTimeout] * 4
    assert max(took for _, took in outcomes) < 0.6
    assert len(lookups) == 1  # one lookup for the four calls, not one thread each
    time.sleep(1)  # the lookup ends: nothing is sent for the calls that gave up
    assert server.peers == []
    assert KhaltiClient(SECRET, url, timeout=2).status("tok", 1).state == "Complete"
    assert len(lookups) == 2


def test_an_answer_trickled_through_a_proxy_ends_the_call_at_the_deadline(
    trickling_khalti, monkeypatch
):
    monkeypatch.setenv("HTTP_PROXY", trickling_khalti)
    monkeypatch.setenv("http_proxy", trickling_khalti)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    outcome, took = ask("http://khalti.test/", 0.5)
    assert isinstance(outcome, KhaltiTimeout)
    assert took < 0.9


@contextlib.contextmanager
def raw_server(handle):
    """A TCP server on 127.0.0.1 for the block, each connection given to ``handle``
    in a thread of its own (an OSError there is the client giving up): its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def handled(conn):
        with conn, contextlib.suppress(OSError):
            handle(conn)

    def serve():
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=handled, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.fixture
def trickled_handshake():
    """A TLS server whose first answer comes one byte at a time (for 5 s at most)."""
    stop = threading.Event()

    def trickle(conn):
        conn.recv(4096)  # the ClientHello
        until = time.monotonic() + 5
        for byte in b"\x16\x03\x03\x40\x00" + b"\x02" * 0x4000:  # a 16 KiB record
            if stop.is_set() or time.monotonic() > until:
                return
            conn.sendall(bytes([byte]))
            time.sleep(0.05)

    with raw_server(trickle) as port:
        yield f"https://khalti.test:{port}/"
        stop.set()


def test_a_tls_handshake_trickled_byte_by_byte_ends_the_call_at_the_deadline(
    trickled_handshake, resolver
):
    # The lookup takes most of the call's time; the handshake gets only what is left.
    resolver.first = 0.6
    outcome, took = ask(trickled_handshake, 1.0)
    assert isinstance(outcome, KhaltiTimeout)
    assert took < 1.3


@pytest.fixture
def slow_tunnel(monkeypatch):
    """An HTTP proxy that opens its tunnel after 0.6 s, then never answers the TLS
    handshake sent through it; HTTPS_PROXY names it."""

    def tunnel(conn):
        conn.recv(4096)  # CONNECT khalti.test:443
        time.sleep(0.6)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        conn.recv(4096)  # the ClientHello, never answered
        time.sleep(5)

    with raw_server(tunnel) as port:
        for name in ("https_proxy", "HTTPS_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        yield


def test_a_tls_handshake_stalled_after_a_slow_tunnel_ends_the_call_at_the_deadline(slow_tunnel):
    # The tunnel takes most of the call's time; the handshake (on a socket wrapped
    # anew, which no cut reaches) gets only what is left, not the whole timeout again.
    outcome, took = ask("https://khalti.test/", 1.0)
    assert isinstance(outcome, KhaltiTimeout)
    assert took < 1.3


def test_a_watchdog_that_raised_keeps_the_next_deadlines(trickling_khalti, quick, monkeypatch):
    """A cut that raises (a socket of a kind the watchdog did not expect, say) neither
    kills the watchdog for good nor leaves later calls without a deadline."""
    cut = deadline._cut
    raised = []

    def cut_once_raising(sock):
        if not raised:
            raised.append(sock)
            raise RuntimeError("an unexpected socket")
        cut(sock)

    monkeypatch.setattr(deadline, "_cut", cut_once_raising)
    outcome, _ = ask(quick[0], 0.3, "wait-0.6")  # not cut: its answer comes, too late
    assert raised
    assert isinstance(outcome, KhaltiTimeout)
    assert the_next_call_keeps_its_deadline(trickling_khalti) < 0.6
    assert [t.name for t in threading.enumerate()].count("dj-khalti watchdog") == 1


def the_next_call_keeps_its_deadline(trickling_khalti):
    """A call of 0.3 s to a trickling Khalti ends as a timeout, in a thread the test
    can give up on (without a deadline it would trickle on): the seconds it took."""
    later = []
    caller = threading.Thread(target=lambda: later.append(ask(trickling_khalti, 0.3)))
    caller.start()
    caller.join(3)
    assert not caller.is_alive(), "the next call had no deadline"
    assert isinstance(later[0][0], KhaltiTimeout)
    return later[0][1]


def test_a_dead_watchdog_is_started_again_at_the_next_call(trickling_khalti, monkeypatch):
    """Whatever ended the watchdog's thread, the next call starts another."""
    run = deadline._Watchdog._run
    died = threading.Event()

    def run_then_die(watchdog):
        if not died.is_set():
            died.set()
            return  # the thread ends, as if something had killed it
        run(watchdog)

    monkeypatch.setattr(deadline, "watchdog", deadline._Watchdog())
    monkeypatch.setattr(deadline._Watchdog, "_run", run_then_die)
    ask(trickling_khalti, 0.01)  # too short to read anything: it starts the watchdog
    assert died.wait(2)
    deadline.watchdog._thread.join(2)
    the_next_call_keeps_its_deadline(trickling_khalti)


def test_an_ssltransport_is_cut_through_the_socket_it_wraps():
    """Through an HTTPS proxy (TLS in TLS), a call reads urllib3's SSLTransport, which
    is no socket: the watchdog cuts the socket it wraps, and lives on."""
    from urllib3.util.ssltransport import SSLTransport

    ours, theirs = socket.socketpair()
    with ours, theirs:
        transport = SSLTransport.__new__(SSLTransport)  # no handshake: only its socket
        transport.socket = ours
        call = deadline.Call(0.2)
        deadline.watchdog.keep(call)
        try:
            call.watch(transport)
            ours.settimeout(2)
            assert ours.recv(1) == b""  # woken by the cut, not by the 2 s timeout
        finally:
            deadline.watchdog.forget(call)
        assert deadline.watchdog._thread.is_alive()
