"""The transport: one pooled session, a wall-clock deadline on every call.

:func:`send` runs each request in a thread of its own, so that the caller stops
waiting at the deadline however slowly Khalti answers; the call's sockets are
then cut, and the thread ends. Whatever the thread raised comes back as one of
dj-khalti's typed exceptions, fresh, with no chained cause: requests'
exceptions hold the request's headers, and the key is in them. While it
waits, a pooled database connection goes back to its pool.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
from typing import Any

import requests
import urllib3.connection
import urllib3.connectionpool
from django.db import connections
from django.views.decorators.debug import sensitive_variables
from requests.adapters import HTTPAdapter

from .. import __version__
from ..exceptions import (
    KhaltiBadResponse,
    KhaltiConfigurationError,
    KhaltiConnectionError,
    KhaltiTimeout,
    KhaltiUnavailable,
)

# The client's one logger, "django_khalti.client", whichever of its modules logs.
logger = logging.getLogger(__package__)

USER_AGENT = f"dj-khalti/{__version__}"
POOL_MAXSIZE = 32
#: Khalti's answers are a few hundred bytes: a longer body is not an answer of Khalti's.
MAX_BODY = 1 << 20


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


# The key is in this frame's ``headers``: Django's error reports must not show it.
@sensitive_variables()
def send(
    method: str, url: str, path: str, headers: dict[str, str], timeout: float, kwargs: Any
) -> tuple[int, bytes]:
    """Send one request and read Khalti's whole answer within ``timeout`` seconds:
    its HTTP status and body.

    Raises :class:`~django_khalti.exceptions.KhaltiTimeout` once the deadline
    passes, and the typed exception of any other failure (:func:`_translated`).
    """
    _give_back_pooled_connections()
    call = _Call(time.monotonic() + timeout)
    outcome: list[tuple[int, bytes] | BaseException] = []
    done = threading.Event()
    threading.Thread(
        target=_make_the_call,
        args=(call, outcome, done, method, url, headers, timeout, kwargs),
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
    return outcome[0]


def _give_back_pooled_connections() -> None:
    """While this thread waits on Khalti, its pooled database connections serve
    other requests: each goes back to its pool (Django takes one again at the next
    query, at no round trip). Never inside a transaction, and never a connection
    that is not pooled: opening that one again would cost more than the wait.
    """
    for connection in connections.all(initialized_only=True):
        pooled = getattr(connection, "pool", None)  # Django's psycopg pool (5.1+)
        if pooled and connection.connection is not None and not connection.in_atomic_block:
            connection.close()


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
