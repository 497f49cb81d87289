"""shop/tasks.py: ``khalti_reconcile`` as a Celery task, for Celery beat to run."""

import io
import logging

from celery import shared_task
from django.core.management import call_command

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def reconcile_khalti_payments() -> None:
    """Settle pending Khalti payments and refunds; deliver undelivered signals again.

    When Khalti could not be reached for some payment, or a receiver raised again,
    the command raises ``CommandError`` after settling what it could: the task
    fails (your Celery monitoring sees it), and what is left waits for the next run.
    """
    output = io.StringIO()
    try:
        call_command("khalti_reconcile", "--limit", "500", stdout=output)
    finally:
        logger.info("khalti_reconcile:\n%s", output.getvalue().rstrip())
