"""Helpers for the modules' ``check()``: attributes by name, and instance attributes
(set in a method, so absent from the class) by the method's source."""

from __future__ import annotations

import inspect


def lacking_attributes(owner, names, label: str) -> list[str]:
    return [f"{label}.{name}" for name in names if not hasattr(owner, name)]


def lacking_in_source(owner, names, label: str) -> list[str]:
    """``self.<name>`` for each name must appear in ``owner``'s source (a class or a
    module): the instance attributes it sets."""
    try:
        source = inspect.getsource(owner)
    except (OSError, TypeError):
        return [f"{label} (source unavailable to check {', '.join(names)})"]
    return [f"{label}.{name}" for name in names if f"self.{name} " not in source and f"self.{name}=" not in source]
