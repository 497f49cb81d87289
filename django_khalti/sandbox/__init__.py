"""A stand-in for Khalti, for the demo: the merchant API, a hosted payment page and a
widget script, served by the test project itself so that the demo works offline.

Part of the test project, never of the installed package. Point
``KHALTI["BASE_URL"]`` at its prefix (``http://127.0.0.1:8000/sandbox/``) and
dj-khalti talks to it as it would to Khalti. No real money moves.
"""
