# dj-khalti: appended to the end of mysite/settings.py.
import os

INSTALLED_APPS += [
    "django_khalti",
    "shop",
]

KHALTI = {
    # Your merchant keys come from the environment, never from your code. The
    # defaults let the site start in development and in tests, where no key is
    # set; any "test_" key is fine for the testing kit. Khalti's sandbox needs
    # your sandbox keys. (A "test_" key with DEBUG = False is warning W002.)
    "SECRET_KEY": os.environ.get("KHALTI_SECRET_KEY", "test_secret_key_dev"),
    "PUBLIC_KEY": os.environ.get("KHALTI_PUBLIC_KEY", "test_public_key_dev"),
    # Khalti's sandbox; set KHALTI_BASE_URL=https://khalti.com/ with live keys.
    "BASE_URL": os.environ.get("KHALTI_BASE_URL", "https://dev.khalti.com/"),
    "TIMEOUT": 10,
    # Your function that says what an order costs (shop/khalti.py).
    "AMOUNT_RESOLVER": "shop.khalti.order_amount",
    # ePayment: your site's public origin, where Khalti sends the buyer back.
    "WEBSITE_URL": os.environ.get("KHALTI_WEBSITE_URL", "http://127.0.0.1:8000"),
    # Where the buyer lands afterwards, with ?payment=<id> appended.
    "SUCCESS_URL": "shop:thanks",
    "FAILURE_URL": "shop:payment-failed",
}
