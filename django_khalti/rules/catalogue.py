"""Every rule of Khalti's that the kit and the sandbox enforce, by id.

docs/reference/testing.rst lists the same ids, each with Khalti's answer and its
source; tests/kit/test_rules.py keeps the page, this catalogue and the rules'
code equal.
"""

from __future__ import annotations

from typing import NamedTuple

#: Where a rule comes from.
DOCUMENTED = "Khalti's docs"
OBSERVED = "observed"
ASSUMED = "assumed"


class Rule(NamedTuple):
    """One of Khalti's rules: what it says, and where we know it from."""

    summary: str
    source: str


RULES: dict[str, Rule] = {
    "auth.key": Rule("No Authorization header: 401.", ASSUMED),
    "auth.wrong-key": Rule("Another key than the merchant's secret key: 401.", DOCUMENTED),
    "auth.public-key": Rule("A key shaped like a public key: 401, never a secret key.", ASSUMED),
    "verify.fields": Rule("Verify needs a token and an integer amount: 400.", ASSUMED),
    "verify.minimum": Rule("Verify of an amount below Rs 10: 400 Invalid token.", ASSUMED),
    "verify.unknown": Rule("Verify of an unknown token: 400 Invalid token.", DOCUMENTED),
    "verify.amount": Rule("Verify with another amount than paid: 400 Invalid token.", ASSUMED),
    "verify.unconfirmed": Rule("Verify of an unconfirmed or failed payment: 400.", ASSUMED),
    "verify.repeat": Rule("A second verify of a token: 400 Invalid token.", ASSUMED),
    "verify.complete": Rule("Verify completes a confirmed payment: 200 record.", DOCUMENTED),
    "status.fields": Rule("Status needs a token and an integer amount: 400.", ASSUMED),
    "status.not-found": Rule("Status of an unknown token or wrong amount: Error.", DOCUMENTED),
    "status.state": Rule("Status answers the payment's state.", DOCUMENTED),
    "transaction.not-found": Rule("Record of an unknown or unsettled transaction: 404.", ASSUMED),
    "transaction.record": Rule("Record of a settled transaction: 200.", DOCUMENTED),
    "refund.not-found": Rule("Refund of an unknown idx: 404.", ASSUMED),
    "refund.amount": Rule("Refund amount not a positive integer: 400.", ASSUMED),
    "refund.state": Rule("Refund of an unsettled or fully refunded payment: 400.", ASSUMED),
    "refund.over": Rule("Refund of more than remains: 400.", ASSUMED),
    "refund.bank-mobile": Rule("Refund of a bank-funded payment without mobile: 400.", DOCUMENTED),
    "refund.made": Rule("Refund of all that remains, or of amount: 200.", DOCUMENTED),
    "initiate.fields": Rule("Initiate's required fields, URLs and lengths: 400.", DOCUMENTED),
    "initiate.minimum": Rule("Initiate below Rs 10: 400.", DOCUMENTED),
    "initiate.maximum": Rule("Initiate above what a record holds (2**63 - 1): 400.", ASSUMED),
    "initiate.breakdown": Rule("amount_breakdown not summing to amount: 400.", DOCUMENTED),
    "initiate.customer": Rule("customer_info not an object, or a bad email: 400.", ASSUMED),
    "initiate.started": Rule("Initiate: pidx, payment_url, expires_at, expires_in.", DOCUMENTED),
    "lookup.fields": Rule("Lookup without a pidx: 400.", ASSUMED),
    "lookup.not-found": Rule("Lookup of an unknown pidx: 404.", DOCUMENTED),
    "lookup.expires": Rule("A link past its time is Expired: 400.", DOCUMENTED),
    "lookup.failed": Rule("Lookup of an Expired or User canceled ePayment: 400.", DOCUMENTED),
    "lookup.status": Rule("Lookup answers the ePayment's status: 200.", DOCUMENTED),
    "transactions.page": Rule(
        "The transaction list: a page of settled ones, newest first.", DOCUMENTED
    ),
    "transactions.page-size": Rule(
        "?page_size= honoured from 1 to 100; else the default.", ASSUMED
    ),
    "transactions.empty": Rule("No transaction yet: page 1, no records, total_pages 1.", ASSUMED),
    "transactions.invalid-page": Rule(
        "A page past the end or not a positive integer: 404.", ASSUMED
    ),
    "payment.minimum": Rule("No payment below Rs 10 exists.", DOCUMENTED),
    "payment.maximum": Rule("No payment above what a record holds (2**63 - 1) exists.", ASSUMED),
    "payment.funded-by": Rule("A payment is funded from a wallet or a bank.", DOCUMENTED),
    "payment.bank-minimum": Rule("No bank-funded payment below Rs 100 exists.", DOCUMENTED),
    "pay.expired": Rule("An expired link cannot be paid or cancelled.", DOCUMENTED),
    "pay.settled": Rule("A paid, cancelled or refunded ePayment cannot be paid again.", ASSUMED),
}
