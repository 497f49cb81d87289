"""The Chromium fixtures of the pay script's tests, for every module here."""

from .test_khalti_pay_js import browser, page  # noqa: F401
