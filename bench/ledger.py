"""The bench's Khalti ledger: a merchant transaction list of N records, made up as it is read.

``bench/fake_server.py`` serves it under ``/ledger-<N>-<YYYYMMDD>/``: the walk's
``BASE_URL`` names the list's size and its newest day, so that one fake serves lists of
several sizes, each in days of its own. Record ``i`` (newest first, a minute apart) is
the transaction ``l<N>-<i>``; :func:`ledger_record` says what it is, and the
bench makes the payments that match (:func:`bench_payment_fields`):

- every 10th was partly refunded in Khalti's dashboard (Rs 1 of it);
- every 100th is foreign: no payment here has it;
- every 250th is for another amount than the payment here;
- the rest match.

Nothing is kept per record: the fake's memory is flat in N as well.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

#: Records a page of the bench's list holds (Khalti's own page size is undocumented).
PAGE_SIZE = 50
NPT = timezone(timedelta(hours=5, minutes=45))
LEDGER_PATH = re.compile(r"^/ledger-(?P<n>\d+)-(?P<day>\d{8})/api(/v2)?/merchant-transaction/$")


def newest(day: str) -> datetime:
    """The list's newest record's time: 23:00 in Nepal on ``day`` (YYYYMMDD)."""
    return datetime.strptime(day + "23", "%Y%m%d%H").replace(tzinfo=NPT)


def amount_of(i: int) -> int:
    return 1000 + (i % 50) * 100


def idx_of(n: int, i: int) -> str:
    return f"l{n}-{i}"


def ledger_record(n: int, day: str, i: int) -> dict:
    """Record ``i`` of the list of ``n`` records newest on ``day``, as Khalti writes it."""
    amount = amount_of(i)
    refunded = 100 if i % 10 == 3 else 0
    if i % 250 == 7:
        amount += 100  # Khalti's books: another amount than the payment's
    return {
        "idx": f"foreign-{n}-{i}" if i % 100 == 42 else idx_of(n, i),
        "type": "Wallet payment",
        "state": "Partially refunded" if refunded else "Completed",
        "amount": amount,
        "fee_amount": amount * 3 // 100,
        "refunded_amount": refunded,
        "created_on": created_on(day, i).isoformat(),
        "source": {"idx": "bench", "name": "Bench Buyer", "mobile": "98XXXXXXX9"},
    }


def created_on(day: str, i: int) -> datetime:
    return newest(day) - timedelta(minutes=i)


def ledger_page(n: int, day: str, page: int) -> tuple[int, dict]:
    """Page ``page`` of a list of ``n`` records: the HTTP status and body."""
    pages = max(1, math.ceil(n / PAGE_SIZE))
    if not 1 <= page <= pages:
        return 404, {"detail": "Invalid page."}
    first = (page - 1) * PAGE_SIZE
    return 200, {
        "total_pages": pages,
        "total_records": n,
        "next": "more" if page < pages else None,
        "previous": "less" if page > 1 else None,
        "record_range": [first + 1, min(first + PAGE_SIZE, n)],
        "current_page": page,
        "records": [ledger_record(n, day, i) for i in range(first, min(first + PAGE_SIZE, n))],
    }


def bench_payment_fields(n: int, day: str, i: int) -> dict | None:
    """The payment here that record ``i`` is of (None: the record is foreign)."""
    if i % 100 == 42:
        return None
    return {
        "idx": idx_of(n, i),
        "amount": amount_of(i),
        "fee_amount": amount_of(i) * 3 // 100,
        "verified_at": created_on(day, i),
    }
