"""The demo's settings with Khalti's real loader on the order page (test_real_widget.py).

The URL is Khalti's own (the npm package's build): the browser's requests to Khalti's
hosts are answered by the test, from the package's files and the demo's sandbox.
Django's security middleware stays as the demo has it (its default COOP, same-origin).
"""

from testproject.settings import *  # noqa: F403

#: Where Khalti serves the loader of khalti-checkout-web 2.2.0 (its iframe's build).
REAL_LOADER_URL = (
    "https://khalti.s3.ap-south-1.amazonaws.com/KPG/dist/2020.12.22.0.0.0/khalti-checkout.iffe.js"
)
SHOP_KHALTI_CHECKOUT_JS = REAL_LOADER_URL
KHALTI = {**KHALTI, "WIDGET_SCRIPT_URL": REAL_LOADER_URL}  # noqa: F405
