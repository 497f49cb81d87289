"""The how-to guides' examples (docs/howto/code/, shown by ``literalinclude``) do what
the pages say: the crontab line and the systemd units name real options of
``khalti_reconcile``, the Celery task runs the command (Celery itself faked: it is no
dependency), and the refund helper refunds and reports.
"""

import configparser
import importlib.util
import logging
import shlex
import sys
import types
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management.base import CommandError
from django.urls import reverse

from django_khalti.management.commands.khalti_reconcile import Command
from django_khalti.models import Payment, Refund
from shop.models import Order

CODE = Path(__file__).resolve().parents[2] / "docs" / "howto" / "code"
VERIFY = reverse("django_khalti:verify")


def reconcile_options(argv):
    """The options ``argv`` (a command line naming ``khalti_reconcile``) gives the
    command, as its own parser reads them (``CommandError`` for an unknown or bad one).
    """
    args = argv[argv.index("khalti_reconcile") + 1 :]
    return vars(Command().create_parser("manage.py", "khalti_reconcile").parse_args(args))


def crontab_entry(number=0):
    """The crontab's job line ``number`` (0: reconcile's, 1: the ledger walk's), its
    environment lines, and its shell command.
    """
    lines = [
        line
        for line in (CODE / "khalti-reconcile.crontab").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    environment = dict(line.split("=", 1) for line in lines if "=" in line.split()[0])
    jobs = [line for line in lines if "=" not in line.split()[0]]
    assert len(jobs) == 2
    fields = jobs[number].split(None, 5)
    return fields[:5], environment, fields[5]


def unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd's keys are case-sensitive
    parser.read_string((CODE / name).read_text())
    return parser


def load(name, module_name):
    spec = importlib.util.spec_from_file_location(module_name, CODE / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tasks(monkeypatch):
    """docs/howto/code/tasks.py, imported with a stand-in ``celery`` whose
    ``shared_task`` hands the function back as it is.
    """
    celery = types.ModuleType("celery")

    def shared_task(*args, **options):
        return args[0] if args and callable(args[0]) else (lambda function: function)

    celery.shared_task = shared_task  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "celery", celery)
    return load("tasks.py", "shop_tasks")


# --- the three schedules name the same real options, every 5 minutes --------------------


def test_the_crontab_line_runs_the_command_with_real_options_every_five_minutes():
    schedule, environment, command = crontab_entry()
    assert schedule == ["*/5", "*", "*", "*", "*"]
    assert environment["DJANGO_SETTINGS_MODULE"] == "shop.settings"
    argv = shlex.split(command.split(">>")[0])
    assert argv[:3] == ["cd", "/srv/shop", "&&"]
    assert argv[3:7] == ["flock", "-n", "-E", "0"]  # a run still going: skip, no failure
    assert argv[8:10] == [".venv/bin/python", "manage.py"]
    assert reconcile_options(argv)["limit"] == 500
    # Its output goes to the log; cron mails only what ``|| echo`` prints on a failure.
    assert ">> /var/log/shop/khalti-reconcile.log 2>&1 || echo" in command


def test_the_crontab_walks_the_ledger_once_a_day_with_real_options_beside_reconcile():
    schedule, _environment, command = crontab_entry(1)
    assert schedule == ["30", "0", "*", "*", "*"]
    argv = shlex.split(command.split(">>")[0])
    assert argv[3:7] == ["flock", "-n", "-E", "0"]
    assert argv[7] != crontab_entry(0)[2].split()[7]  # a lock of its own
    options = reconcile_options(argv)
    assert options["ledger"] is True
    assert options["since"] == "30d"
    assert ">> /var/log/shop/khalti-ledger.log 2>&1 || echo" in command


def test_the_systemd_service_is_a_oneshot_run_of_the_command_with_real_options():
    service = unit("khalti-reconcile.service")["Service"]
    assert service["Type"] == "oneshot"
    assert service["User"] == "shop"
    assert service["WorkingDirectory"] == "/srv/shop"
    assert service["Environment"] == "DJANGO_SETTINGS_MODULE=shop.settings"
    assert service["EnvironmentFile"].startswith("/")
    argv = shlex.split(service["ExecStart"])
    assert argv[:2] == ["/srv/shop/.venv/bin/python", "manage.py"]  # systemd wants a full path
    assert reconcile_options(argv)["limit"] == 500


def test_the_systemd_timer_runs_it_every_five_minutes_and_catches_up():
    timer = unit("khalti-reconcile.timer")
    assert timer["Timer"]["OnCalendar"] == "*:0/5"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_the_beat_schedule_runs_the_task_every_five_minutes(tasks):
    schedule = load("celery_beat.py", "celery_beat").CELERY_BEAT_SCHEDULE["khalti-reconcile"]
    module, name = schedule["task"].rsplit(".", 1)
    assert module == "shop.tasks"  # docs/howto/code/tasks.py is shown as shop/tasks.py
    assert callable(getattr(tasks, name))
    assert schedule["schedule"] == timedelta(minutes=5)
    assert schedule["options"]["expires"] < schedule["schedule"].total_seconds()


def test_a_bad_option_is_refused_by_the_commands_parser():
    # What the checks above rely on: a line with a misspelt option would fail them.
    with pytest.raises(CommandError):
        reconcile_options(["manage.py", "khalti_reconcile", "--limits", "500"])


# --- the Celery task runs the command -----------------------------------------------------


@pytest.fixture
def pending_payment(client, khalti_fake, db):
    """An order whose payment is pending: Khalti timed out on its verification, and the
    buyer's page never sent it again. Created long enough ago for the command.
    """
    order = Order.objects.create(reference="ORD-1", total=1000)
    paid = khalti_fake.add_payment(amount=1000, outcome="timeout")
    response = client.post(VERIFY, paid.payload(order.reference), content_type="application/json")
    assert response.status_code == 504
    payment = Payment.objects.get()
    Payment.objects.filter(pk=payment.pk).update(created_at=payment.created_at - timedelta(hours=1))
    return order, payment


def test_the_celery_task_settles_a_pending_payment(
    tasks, pending_payment, caplog, django_capture_on_commit_callbacks
):
    order, payment = pending_payment

    with caplog.at_level(logging.INFO), django_capture_on_commit_callbacks(execute=True):
        tasks.reconcile_khalti_payments()

    payment.refresh_from_db()
    order.refresh_from_db()
    assert payment.status == Payment.Status.VERIFIED
    assert order.paid
    assert "checked 1: 1 verified, 0 failed, 0 still pending" in caplog.text


def test_the_celery_task_fails_when_khalti_cannot_be_reached(
    tasks, pending_payment, khalti_fake, caplog
):
    order, payment = pending_payment
    khalti_fake.fail_next("status", "connection_error", times=10)

    with caplog.at_level(logging.INFO), pytest.raises(CommandError, match="could not be reached"):
        tasks.reconcile_khalti_payments()

    payment.refresh_from_db()
    order.refresh_from_db()
    assert payment.status == Payment.Status.PENDING  # left for the next run
    assert not order.paid
    assert "checked 1: 0 verified, 0 failed, 1 still pending" in caplog.text  # logged anyway


def test_the_celery_task_passes_its_options_to_the_command(tasks, monkeypatch):
    calls = []
    monkeypatch.setattr(tasks, "call_command", lambda *a, **kw: calls.append(a))
    tasks.reconcile_khalti_payments()
    (args,) = calls
    assert reconcile_options(list(args))["limit"] == 500


# --- the refund helper ----------------------------------------------------------------------


@pytest.fixture
def refunds():
    return load("refunds.py", "shop_refunds")


@pytest.fixture
def verified_payment(client, khalti_fake, db, django_capture_on_commit_callbacks):
    order = Order.objects.create(reference="ORD-2", total=100000)  # Rs 1,000
    paid = khalti_fake.add_payment(amount=100000)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            VERIFY, paid.payload(order.reference), content_type="application/json"
        )
    assert response.status_code == 200
    return Payment.objects.get()


def test_the_refund_helper_refunds_part_then_the_rest(refunds, verified_payment, khalti_fake):
    assert refunds.refund(verified_payment, amount=40000) == (
        "Refunded Rs 400.00; Rs 400.00 refunded in all, the payment is partially refunded."
    )
    assert refunds.refund(verified_payment) == (
        "Refunded Rs 600.00; Rs 1,000.00 refunded in all, the payment is refunded."
    )
    assert [call.amount for call in khalti_fake.refund_calls] == [40000, 60000]
    assert refunds.refund(verified_payment).startswith("Not refunded: ")


def test_the_refund_helper_says_when_the_outcome_is_unknown(refunds, verified_payment, khalti_fake):
    khalti_fake.fail_next("refund", "timeout")

    assert refunds.refund(verified_payment).startswith("Not known yet: ")
    assert Refund.objects.get().status == Refund.Status.PENDING
    assert refunds.refund(verified_payment).startswith("Not refunded: Another refund")


# --- the testing how-to's reconciliation test, run here as a shop would ---------------------

_shop_test = load("test_reconcile.py", "shop_test_reconcile")
order = _shop_test.order
test_the_testing_howtos_reconcile_example = (
    _shop_test.test_reconcile_settles_a_payment_whose_verification_timed_out
)
