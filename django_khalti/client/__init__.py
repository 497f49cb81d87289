"""HTTP and Khalti's wire format: one method per endpoint.

The client never touches the ORM, DRF or signals. Khalti's words are
translated here, once, into :class:`KhaltiOutcome`: the services decide on
that enum and never see Khalti's spelling. Every call has a wall-clock
deadline of ``TIMEOUT`` seconds, from connecting to the last byte of the
answer, kept by one watchdog thread per process (no thread is started per
call), goes through one pooled ``requests.Session`` per process, and turns
every transport failure into a fresh typed exception, chained to none (requests'
exceptions hold the request's headers). The secret key travels only in the ``Authorization`` header of each request; it is
never stored on the session, logged or put in an exception.

Its modules, each importable from here:

- ``api``: :class:`KhaltiClient`, one method per endpoint, and the checks of its
  settings (:func:`key_is_clean`, :func:`timeout_is_sane`);
- ``answers``: Khalti's answers (:class:`KhaltiTransaction`, :class:`KhaltiStatus`,
  :class:`KhaltiInitiation`, :class:`KhaltiLookup`, the transaction list's
  :class:`KhaltiLedgerPage`) and the one translation of
  Khalti's states into :class:`KhaltiOutcome` (:func:`outcome_of`);
- ``parsing``: Khalti's bodies read and checked into those answers
  (:func:`error_message` for its refusals);
- ``transport``: the pooled session (:func:`get_session`), its connections
  whose sockets a call's deadline can cut, and transport failures turned into
  typed exceptions;
- ``deadline``: each call's deadline, and the watchdog thread that keeps them.
"""

from .answers import (
    KhaltiInitiation,
    KhaltiLedgerPage,
    KhaltiLedgerRecord,
    KhaltiLookup,
    KhaltiOutcome,
    KhaltiStatus,
    KhaltiTransaction,
    KhaltiUnreadableRecord,
    outcome_of,
)
from .api import (
    INITIATE_PATH,
    LEGACY_TRANSACTIONS_PATH,
    LOOKUP_PATH,
    MAX_TIMEOUT,
    REFUND_PATH,
    STATUS_PATH,
    TRANSACTION_PATH,
    TRANSACTIONS_PATH,
    UNSETTLED_4XX,
    VERIFY_PATH,
    KhaltiClient,
    key_is_clean,
    timeout_is_sane,
)
from .parsing import MOBILE_MAX_LENGTH, error_message
from .transport import MAX_BODY, POOL_MAXSIZE, USER_AGENT, get_session

__all__ = [
    "INITIATE_PATH",
    "LEGACY_TRANSACTIONS_PATH",
    "LOOKUP_PATH",
    "MAX_BODY",
    "MAX_TIMEOUT",
    "MOBILE_MAX_LENGTH",
    "POOL_MAXSIZE",
    "REFUND_PATH",
    "STATUS_PATH",
    "TRANSACTIONS_PATH",
    "TRANSACTION_PATH",
    "UNSETTLED_4XX",
    "USER_AGENT",
    "VERIFY_PATH",
    "KhaltiClient",
    "KhaltiInitiation",
    "KhaltiLedgerPage",
    "KhaltiLedgerRecord",
    "KhaltiLookup",
    "KhaltiOutcome",
    "KhaltiStatus",
    "KhaltiTransaction",
    "KhaltiUnreadableRecord",
    "error_message",
    "get_session",
    "key_is_clean",
    "outcome_of",
    "timeout_is_sane",
]
