"""``manage.py seed_demo``: the demo's orders and a superuser. Running it again changes nothing."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from shop.catalogue import PRODUCTS_BY_SLUG, SEED_ORDERS
from shop.models import Order

USERNAME = "admin"
PASSWORD = "admin"


class Command(BaseCommand):
    help = "Create the demo's unpaid orders and an admin/admin superuser (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--url",
            default="http://127.0.0.1:8000/",
            help="Where the demo is served, for the message (default: %(default)s).",
        )

    def handle(self, *args: Any, url: str, **options: Any) -> None:
        created = 0
        for reference, slug in SEED_ORDERS:
            product = PRODUCTS_BY_SLUG[slug]
            _, new = Order.objects.get_or_create(
                reference=reference, defaults={"name": product.name, "total": product.price}
            )
            created += new
        unpaid = Order.objects.filter(paid=False).count()
        self.stdout.write(f"Demo orders: {created} created, {unpaid} unpaid in all.")

        User = get_user_model()
        user = User.objects.filter(username=USERNAME).first()
        if user is None:
            User.objects.create_superuser(USERNAME, "admin@example.com", PASSWORD)
            login = f"{USERNAME} / {PASSWORD} (created)"
        elif user.check_password(PASSWORD):
            login = f"{USERNAME} / {PASSWORD}"
        else:
            login = f"{USERNAME} (exists; its password was changed, so it is left alone)"

        url = url if url.endswith("/") else url + "/"
        self.stdout.write(self.style.SUCCESS(f"Shop:  {url}"))
        self.stdout.write(self.style.SUCCESS(f"Admin: {url}admin/  login {login}"))
