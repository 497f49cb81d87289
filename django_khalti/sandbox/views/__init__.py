"""The sandbox's views: Khalti's merchant API and hosted page (``merchant``), and what
Khalti's widget calls from the buyer's browser (``widget``).
"""
