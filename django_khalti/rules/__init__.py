"""Khalti's rules, as its server applies them: one model of what Khalti answers.

Two stand-ins for Khalti ask here, and nowhere else, what Khalti would answer:
the testing kit (:mod:`django_khalti.testing`, in-process, on ``responses``) and
the sandbox (:mod:`django_khalti.sandbox`, at URLs a browser reaches). Each keeps
its own records (the kit in memory, the sandbox in its tables) and shows them to
the rules through a :class:`~.answers.KhaltiLedger`; the rules read the request,
decide, tell the ledger what changes at Khalti, and give back an
:class:`~.answers.Answer`: the HTTP status, the JSON body and the id of the rule
that decided.

``shapes`` holds Khalti's words and shapes (constants, records, bodies, what a
payment may be), ``answers`` each endpoint's answer, ``catalogue`` every rule by
id (:data:`RULES`), which docs/reference/testing.rst lists with Khalti's answer
and where the rule comes from. Plain Python on Django's utilities: no models, no
DRF, no ``responses``.
"""
