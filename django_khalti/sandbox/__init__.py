"""A local stand-in for Khalti: its merchant API, its hosted ePayment page and its
widget script, served by your own site so that both checkouts work offline.

An optional app for development: add ``"django_khalti.sandbox"`` to
``INSTALLED_APPS`` and ``path("sandbox/", include("django_khalti.sandbox.urls"))`` to
your URLs, and point ``KHALTI["BASE_URL"]`` at that prefix
(``http://127.0.0.1:8000/sandbox/``) and ``KHALTI["WIDGET_SCRIPT_URL"]`` at
``/sandbox/khalti-checkout.js``; dj-khalti then talks to it as it would to Khalti.
No real money moves. It serves only while ``DEBUG`` is on and no key is a live one
(:mod:`django_khalti.sandbox.guard`; system checks ``khalti_sandbox.E001`` and
``E002``). See docs/reference/sandbox.rst.
"""
