"""Management commands of dj-khalti."""
