"""Khalti payments for Django, verified server to server."""

__version__ = "0.1.0"
