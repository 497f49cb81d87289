"""The transport: one pooled session, a wall-clock deadline on every call.

:func:`send` makes each call in its caller's own thread, and starts no thread
for it: the process's one watchdog (:mod:`.deadline`) keeps every call's
deadline, and cuts the sockets of a call whose deadline passes, which wakes
the read waiting on Khalti; the caller then raises
:class:`~django_khalti.exceptions.KhaltiTimeout`. So the whole call is bounded,
from connecting to the last byte of the answer, however slowly Khalti trickles
it:

- a new connection's host name is looked up, and its addresses tried, within
  the time the call has left, which also bounds its TLS handshake;
- nothing is sent once the deadline has passed (a socket the call takes up
  then is cut at once), and an answer whose last bytes come after it is late;
- an answer longer than :data:`MAX_BODY` is refused as it is read;
- a connection is released from its call before it goes back to the pool, so
  that a deadline passing later never cuts a socket another call uses by then.

Limits. Only a new connection to a host name starts a thread: its lookup, in
the system's resolver, where no cut reaches; one per name at a time, which a
resolver that hangs holds until it gives up (the callers do not wait for it
past their deadlines). Through a SOCKS proxy, whose sockets are its own, the
deadline is only checked between reads of 1 KiB. And ``responses``, which
answers without a socket, cannot be cut: the testing kit answers a slow choice
in a thread of its own (:mod:`django_khalti.testing`).

Whatever a call raised comes back as one of dj-khalti's typed exceptions,
fresh, with no chained cause: requests' exceptions hold the request's headers,
and the key is in them. While a call waits on Khalti, the caller's pooled
database connections go back to their pool.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import requests
import urllib3.connection
import urllib3.connectionpool
from django.db import connections
from django.views.decorators.debug import sensitive_variables
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.ssl_ import is_ipaddress

from .. import __version__
from ..exceptions import (
    KhaltiBadResponse,
    KhaltiConfigurationError,
    KhaltiConnectionError,
    KhaltiTimeout,
    KhaltiUnavailable,
)
from . import deadline

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


class _TooLong(Exception):
    """The answer is longer than any of Khalti's."""


if TYPE_CHECKING:  # pragma: no cover
    _Connection = urllib3.connection.HTTPConnection
else:
    _Connection = object


class _Watched(_Connection):
    """A connection whose sockets the call it serves can cut (:mod:`.deadline`)."""

    #: The call it serves, and the socket that call watches for it.
    _serving: deadline.Call | None = None
    _watched: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        """A new socket, connected within the time the call has left, its host's
        name looked up within it too (:func:`~.deadline.look_up`). The socket's
        timeout is that time, which also bounds a TLS handshake as a whole (Python's
        ``ssl`` keeps a handshake's timeout as one deadline).
        """
        call = deadline.current()
        if call is None:
            return super()._new_conn()
        name = self._dns_host
        addresses: list[str] = [name]
        if not is_ipaddress(name.strip("[]")):
            try:
                addresses = [info[4][0] for info in deadline.look_up(name, self.port, call)]
            except OSError as exc:
                raise NewConnectionError(self, f"Failed to resolve {name!r}: {exc}") from None
        error: Exception | None = None
        for address in dict.fromkeys(addresses):  # each once, in the resolver's order
            self.timeout = call.left()  # never more than the connect timeout given
            self._dns_host = address
            try:
                sock: socket.socket = super()._new_conn()
            except (NewConnectionError, ConnectTimeoutError) as exc:
                error = exc
                continue
            finally:
                self._dns_host = name
            self._watch(sock)  # a proxy's CONNECT answer is read from it, say
            try:
                _bound(sock, call)
            except deadline.Late:
                sock.close()  # connected as the deadline passed: nobody else closes it
                raise
            return sock
        raise error or NewConnectionError(self, f"No address for {name!r}")

    def connect(self) -> None:
        super().connect()
        self._watch(self.sock)  # an SSLSocket, now

    def _tunnel(self) -> None:
        # The TLS handshake through the proxy's tunnel comes next, on the socket
        # wrapped anew (the watched one is detached): its timeout is the time left.
        super()._tunnel()
        call = deadline.current()
        if call is not None and self.sock is not None:
            _bound(self.sock, call)

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self._watch(self.sock)  # a kept-alive connection: its socket is already open
        return super().request(*args, **kwargs)

    def _watch(self, sock: socket.socket | None) -> None:
        """The current call reads ``sock``: it cuts it at its deadline."""
        call = deadline.current()
        if call is None or sock is None or (call is self._serving and sock is self._watched):
            return
        self.release()
        self._serving, self._watched = call, sock
        call.watch(sock)

    def release(self) -> None:
        """The connection goes back to the pool: its socket is never cut for the
        call it served.

        A connection closed meanwhile stays watched until then, or until its call
        finishes: an answer read to its end after a ``Connection: close`` is still
        cut at the deadline.
        """
        call, sock = self._serving, self._watched
        self._serving = self._watched = None
        if call is not None and sock is not None:
            call.unwatch(sock)


def _bound(sock: socket.socket, call: deadline.Call) -> None:
    """``sock``'s timeout: the time ``call`` has left. A TLS handshake on it (one
    deadline, in Python's ``ssl``) then ends by the call's, which no cut reaches
    (wrapping the socket detaches the watched one); connecting, or a proxy's
    tunnel, took part of the time the socket was given before.
    """
    sock.settimeout(call.left())


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _Releasing:
    """A pool that releases each connection from its call before taking it back."""

    def _put_conn(self, conn: Any) -> None:
        if isinstance(conn, _Watched):
            conn.release()
        super()._put_conn(conn)  # type: ignore[misc]


class _HTTPPool(_Releasing, urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(_Releasing, urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(HTTPAdapter):
    """requests' adapter, on connections whose sockets a call can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # Through an HTTP(S) proxy too (HTTPS_PROXY in the environment). A SOCKS
        # proxy's connections are its own: the deadline is then checked between
        # reads only (see the module's docstring).
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager


# The key is in these frames' ``headers`` and in requests' frames below them: Django's
# error reports hide every variable of them.
@sensitive_variables()
def _exchange(
    call: deadline.Call,
    method: str,
    url: str,
    headers: dict[str, str],
    timeout: float,
    kwargs: Any,
) -> tuple[int, bytes]:
    """Send one request and read the whole answer, before ``call``'s deadline.

    Never sends a request once the deadline has passed, and stops at the first
    read after it (the watchdog cuts the call's sockets then, which wakes it).
    """
    with deadline.making(call):
        if call.over:
            raise deadline.Late()
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
                    raise deadline.Late()
                body += chunk
                if len(body) > MAX_BODY:
                    raise _TooLong()
        if call.over:
            raise deadline.Late()  # its last bytes came too late
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
    call = deadline.Call(timeout)
    deadline.watchdog.keep(call)
    try:
        try:
            return _exchange(call, method, url, headers, timeout, kwargs)
        finally:
            deadline.watchdog.forget(call)
    except BaseException as exc:
        # Only kept here: translated and raised below, out of this block, so that
        # the error raised has no ``__context__``. requests' exceptions carry the
        # request, its headers (the key) and, for a bad header, its value.
        failure, late = exc, call.over
    raise _translated(failure, late, method, path)


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


def _translated(exc: BaseException, late: bool, method: str, path: str) -> Exception:
    """The error to raise for what a call raised: a fresh one, with no ``__cause__``
    or ``__context__`` (requests' exceptions hold the request's headers; an invalid
    header's message holds its value: the key). Whatever a call raised once its
    deadline had passed (a cut socket's error, say) is a timeout.
    """
    if isinstance(exc, (deadline.Late, requests.Timeout)) or (late and isinstance(exc, Exception)):
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
