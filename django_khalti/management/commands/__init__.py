"""``khalti_reconcile``: settle pending payments and refunds by asking Khalti."""
