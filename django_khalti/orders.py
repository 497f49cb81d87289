"""What the shop's resolver may return: :class:`KhaltiOrder`. Nothing here touches the database."""

from __future__ import annotations

from typing import NamedTuple


class KhaltiOrder(NamedTuple):
    """An order as the shop's ``AMOUNT_RESOLVER`` names it: its canonical reference
    and the amount in paisa it expects.

    Return one when several spellings reach the same order (an integer id sent as
    ``"5"`` or ``"05"``; a reference looked up case-insensitively, as MariaDB's
    default collation does): dj-khalti claims the order by ``reference``, so the
    spellings cannot start two payments of one order. A plain ``int`` return
    means the reference the buyer's page sent is canonical. A plain
    ``(reference, amount)`` tuple works too.
    """

    #: The order's reference as the shop stores it (at most 255 characters).
    reference: str
    #: What the shop expects for the order, in paisa.
    amount: int
