# The local Khalti sandbox: appended to the end of mysite/settings.py, after
# dj-khalti's settings. DEBUG only, and only while no Khalti keys are set in the
# environment: with them, you pay in Khalti's own sandbox as before.
if DEBUG and not os.environ.get("KHALTI_SECRET_KEY"):
    INSTALLED_APPS += ["django_khalti.sandbox"]
    # Khalti's API and pages, served by this site under /sandbox/ (mysite/urls.py).
    KHALTI["BASE_URL"] = KHALTI["WEBSITE_URL"].rstrip("/") + "/sandbox/"
    # The sandbox's stand-in for Khalti's widget script.
    KHALTI["WIDGET_SCRIPT_URL"] = "/sandbox/khalti-checkout.js"
