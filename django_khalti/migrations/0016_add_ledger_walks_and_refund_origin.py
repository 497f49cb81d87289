"""Ledger walks of Khalti's merchant transaction list (``khalti_reconcile --ledger``), each
record read as an entry; a refund's origin (this app, or Khalti's dashboard outside it)."""

import uuid

import django.db.models.deletion
from django.db import migrations, models

import django_khalti.models


class Migration(migrations.Migration):
    dependencies = [
        ("django_khalti", "0015_drop_unused_pattern_indexes"),
    ]

    operations = [
        migrations.CreateModel(
            name="LedgerWalk",
            fields=[
                (
                    "id",
                    models.UUIDField(
                        default=uuid.uuid4, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("since", models.DateTimeField(verbose_name="since")),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("running", "Running"),
                            ("interrupted", "Interrupted"),
                            ("finished", "Finished"),
                        ],
                        db_index=True,
                        default="running",
                        max_length=16,
                        verbose_name="status",
                    ),
                ),
                ("next_page", models.PositiveIntegerField(default=1, verbose_name="next page")),
                (
                    "total_pages",
                    models.PositiveIntegerField(
                        blank=True, null=True, verbose_name="pages at Khalti"
                    ),
                ),
                (
                    "total_records",
                    models.PositiveIntegerField(
                        blank=True, null=True, verbose_name="records at Khalti"
                    ),
                ),
                ("pages_read", models.PositiveIntegerField(default=0, verbose_name="pages read")),
                (
                    "records_read",
                    models.PositiveIntegerField(default=0, verbose_name="records read"),
                ),
                ("differences", models.PositiveIntegerField(default=0, verbose_name="differences")),
                ("last_error", models.TextField(blank=True, verbose_name="last error")),
                ("read_to_end", models.BooleanField(default=False, verbose_name="read to the end")),
                ("resumed", models.PositiveIntegerField(default=0, verbose_name="times resumed")),
                (
                    "started_at",
                    models.DateTimeField(
                        db_default=django_khalti.models.DbNow(),
                        db_index=True,
                        verbose_name="started",
                    ),
                ),
                (
                    "finished_at",
                    models.DateTimeField(blank=True, null=True, verbose_name="finished"),
                ),
                (
                    "claimed_at",
                    models.DateTimeField(
                        blank=True, editable=False, null=True, verbose_name="claimed"
                    ),
                ),
                ("holder", models.UUIDField(blank=True, editable=False, null=True)),
            ],
            options={
                "verbose_name": "ledger walk",
                "verbose_name_plural": "ledger walks",
                "ordering": ["-started_at"],
            },
        ),
        migrations.AddField(
            model_name="refund",
            name="origin",
            field=models.CharField(
                choices=[("app", "This app"), ("khalti", "Khalti, outside the app")],
                db_default="app",
                default="app",
                max_length=16,
                verbose_name="made by",
            ),
        ),
        migrations.CreateModel(
            name="LedgerEntry",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                (
                    "idx",
                    models.CharField(
                        blank=True, max_length=255, null=True, verbose_name="Khalti transaction id"
                    ),
                ),
                (
                    "kind",
                    models.CharField(
                        choices=[
                            ("matched", "Matches"),
                            ("refunded_at_khalti", "Refunded at Khalti"),
                            ("foreign", "Foreign: no payment here"),
                            ("amount_differs", "Another amount at Khalti"),
                            ("state_differs", "Another state at Khalti"),
                            ("missing", "Missing at Khalti"),
                            ("not_settled_here", "Paid at Khalti, not settled here"),
                            ("refund_in_flight", "Refund in flight"),
                            ("unreadable", "Unreadable record"),
                        ],
                        db_index=True,
                        max_length=32,
                        verbose_name="kind",
                    ),
                ),
                ("page", models.PositiveIntegerField(blank=True, null=True, verbose_name="page")),
                (
                    "state",
                    models.CharField(blank=True, max_length=64, verbose_name="state at Khalti"),
                ),
                (
                    "type",
                    models.CharField(blank=True, max_length=64, verbose_name="type at Khalti"),
                ),
                (
                    "amount",
                    models.PositiveBigIntegerField(
                        blank=True, null=True, verbose_name="amount (paisa)"
                    ),
                ),
                (
                    "fee_amount",
                    models.PositiveBigIntegerField(
                        blank=True, null=True, verbose_name="fee (paisa)"
                    ),
                ),
                (
                    "refunded_amount",
                    models.PositiveBigIntegerField(
                        blank=True, null=True, verbose_name="refunded at Khalti (paisa)"
                    ),
                ),
                (
                    "created_on",
                    models.DateTimeField(blank=True, null=True, verbose_name="created at Khalti"),
                ),
                ("record", models.JSONField(blank=True, null=True, verbose_name="Khalti's record")),
                ("detail", models.TextField(blank=True, verbose_name="detail")),
                (
                    "payment",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="ledger_entries",
                        to="django_khalti.payment",
                        verbose_name="payment",
                    ),
                ),
                (
                    "walk",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="entries",
                        to="django_khalti.ledgerwalk",
                        verbose_name="walk",
                    ),
                ),
            ],
            options={
                "verbose_name": "ledger entry",
                "verbose_name_plural": "ledger entries",
                "ordering": ["id"],
                "constraints": [
                    models.UniqueConstraint(fields=("walk", "idx"), name="khalti_ledger_entry_once")
                ],
            },
        ),
    ]
