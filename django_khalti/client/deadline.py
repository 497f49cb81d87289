"""Every call's wall-clock deadline, kept by one watchdog thread per process.

A call to Khalti runs in its caller's own thread. Its :class:`Call` holds its
deadline and the sockets it reads; the watchdog, started at the first call (and
again in a forked child), sleeps until the earliest deadline of the calls under
way and abandons each call whose deadline passes: it cuts the call's sockets,
which wakes the read waiting on Khalti with an error. A connection is released
from its call before it goes back to the pool (:meth:`Call.unwatch`), and a call
that finishes is forgotten (:meth:`_Watchdog.forget`), both under the watchdog's
one lock, as every cut is: a cut never reaches a socket that another call has
taken from the pool since.

A new connection's host name is looked up in a thread of its own (one per name
at a time, whoever asks), waited for no longer than the call's deadline: the
system's resolver blocks in C, where no cut reaches, for as long as its own
timeouts say. Kept-alive connections, and addresses given as IPs, look nothing up.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from urllib3.util.connection import allowed_gai_family
from urllib3.util.ssltransport import SSLTransport

# The client's one logger, "django_khalti.client", whichever of its modules logs.
logger = logging.getLogger(__package__)

#: A host's addresses, as :func:`socket.getaddrinfo` gives them.
Addresses = list[tuple[Any, ...]]
#: What a call reads: a socket, or (TLS in TLS, through an HTTPS proxy) urllib3's
#: SSLTransport, which is no socket but wraps one.
Readable = socket.socket | SSLTransport


class Late(Exception):
    """The call's deadline passed before (or while) its answer arrived."""


def _cut(sock: Readable) -> None:
    """Shut a socket down, waking whatever thread is blocked reading it."""
    while not isinstance(sock, socket.socket):  # an SSLTransport: the socket it wraps
        sock = sock.socket
    # socket.socket's own shutdown, also for an SSLSocket: the TLS layer is left to
    # the reading thread, which now gets an error instead of bytes.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Call:
    """One call to Khalti: its deadline, and the sockets to cut once it passes, so
    that a slow or trickling Khalti cannot hold the caller (or a pooled
    connection) past it.

    Its flags and sockets change only under the watchdog's lock.
    """

    __slots__ = ("abandoned", "deadline", "finished", "kept", "sockets")

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        #: Its sockets were cut: its caller raises KhaltiTimeout.
        self.abandoned = False
        #: It returned or raised: nothing of it is cut any more.
        self.finished = False
        #: It is in the watchdog's heap.
        self.kept = False
        self.sockets: list[Readable] = []

    @property
    def over(self) -> bool:
        """Whether the call was abandoned, or its deadline has passed."""
        return self.abandoned or time.monotonic() >= self.deadline

    def left(self) -> float:
        """The seconds the call has left; raises :class:`Late` once it has none."""
        left = self.deadline - time.monotonic()
        if self.abandoned or left <= 0:
            raise Late()
        return left

    def watch(self, sock: Readable) -> None:
        """A socket the call now uses: cut at once if its deadline has passed."""
        with watchdog.lock:
            if self.finished:
                return
            self.sockets.append(sock)
            if self.over:
                self.abandon()

    def unwatch(self, sock: Readable) -> None:
        """A socket the call no longer uses (its connection goes back to the pool,
        or is closed): never cut for this call from now on.
        """
        with watchdog.lock, contextlib.suppress(ValueError):
            self.sockets.remove(sock)

    def abandon(self) -> None:
        """Cut every socket the call uses (under the watchdog's lock)."""
        self.abandoned = True
        for sock in self.sockets:
            try:
                _cut(sock)
            except Exception:  # the watchdog must outlive it: every other call's deadline
                logger.exception("dj-khalti could not cut a socket of a late call.")


class _Watchdog:
    """The deadlines of the calls under way (a heap, the earliest first) and the
    thread that abandons each call whose deadline passes.
    """

    def __init__(self) -> None:
        self.lock = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Call]] = []
        self._finished_in_heap = 0  # dropped lazily: at the top, or all at once
        self._order = itertools.count()  # ties broken by arrival, never by Call
        self._thread: threading.Thread | None = None
        self._wakes_at: float | None = None  # None: sleeps until told

    def keep(self, call: Call) -> None:
        """Watch ``call`` until it finishes (:meth:`forget`)."""
        with self.lock:
            heapq.heappush(self._heap, (call.deadline, next(self._order), call))
            call.kept = True
            if self._thread is None or not self._thread.is_alive():
                # The first call, or a watchdog that died (whatever killed it):
                # deadlines are kept again from this call on.
                thread = threading.Thread(target=self._run, name="dj-khalti watchdog", daemon=True)
                thread.start()
                self._thread = thread
            elif self._wakes_at is None or call.deadline < self._wakes_at:
                # Only a deadline earlier than its next look wakes the watchdog: under
                # load, calls come and go without a hand-off to its thread.
                self.lock.notify()

    def forget(self, call: Call) -> None:
        """``call`` returned or raised: never abandon it, nor cut its sockets."""
        with self.lock:
            call.finished = True
            call.sockets.clear()
            if call.kept:
                self._finished_in_heap += 1
            self._drop_finished()

    def _drop_finished(self) -> None:
        heap = self._heap
        while heap and heap[0][2].finished:
            heapq.heappop(heap)[2].kept = False
            self._finished_in_heap -= 1
        if self._finished_in_heap > 32 and 2 * self._finished_in_heap > len(heap):
            # A call stuck at the top holds finished ones behind it: sweep them
            # all at once, so the heap stays within twice the calls under way.
            for _, _, call in heap:
                call.kept = not call.finished
            heap[:] = [entry for entry in heap if not entry[2].finished]
            heapq.heapify(heap)
            self._finished_in_heap = 0

    def _run(self) -> None:
        with self.lock:
            while True:
                now = time.monotonic()
                heap = self._heap
                while heap and heap[0][0] <= now:
                    call = heapq.heappop(heap)[2]
                    call.kept = False
                    if call.finished:
                        self._finished_in_heap -= 1
                    else:
                        call.abandon()
                self._drop_finished()
                self._wakes_at = heap[0][0] if heap else None
                self.lock.wait(None if self._wakes_at is None else self._wakes_at - now)


watchdog = _Watchdog()

#: The call the current thread is making, for the connections it uses.
_current = threading.local()


def current() -> Call | None:
    """The call this thread is making, if any."""
    return getattr(_current, "call", None)


@contextlib.contextmanager
def making(call: Call) -> Any:
    """Within this block, the current thread makes ``call``."""
    outer = current()
    _current.call = call
    try:
        yield
    finally:
        _current.call = outer


_lookups_lock = threading.Lock()
_lookups: dict[tuple[str, int], Future[Addresses]] = {}


def look_up(host: str, port: int, call: Call) -> Addresses:
    """``host``'s addresses, or :class:`Late` once ``call``'s deadline passes.

    One lookup per host and port at a time, shared by every call that asks
    meanwhile: a resolver that hangs holds one thread, not one per call.
    """
    key = (host, port)
    with _lookups_lock:
        lookup = _lookups.get(key)
        if lookup is None:
            lookup = _lookups[key] = Future()
            threading.Thread(
                target=_look_up, args=(key, lookup), name="dj-khalti lookup", daemon=True
            ).start()
    try:
        return lookup.result(call.left())
    except FutureTimeout:
        raise Late() from None


def _look_up(key: tuple[str, int], lookup: Future[Addresses]) -> None:
    try:
        addresses = socket.getaddrinfo(*key, allowed_gai_family(), socket.SOCK_STREAM)
    except BaseException as exc:  # handed to every call waiting for it
        lookup.set_exception(exc)
    else:
        lookup.set_result(addresses)
    finally:
        with _lookups_lock:
            if _lookups.get(key) is lookup:
                del _lookups[key]


def _after_fork_in_child() -> None:
    # A forked worker (gunicorn --preload) has none of its parent's threads: a
    # watchdog and lookups of its own, with locks no thread of the parent holds.
    global watchdog, _lookups_lock, _lookups
    watchdog = _Watchdog()
    _lookups_lock = threading.Lock()
    _lookups = {}


os.register_at_fork(after_in_child=_after_fork_in_child)
