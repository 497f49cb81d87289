"""Template tags: ``{% load khalti %}`` (:mod:`.khalti`)."""
