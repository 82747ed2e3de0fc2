"""Application protocols: one module each, listed once in `all_protocols`."""

from __future__ import annotations

from .base import Protocol


def all_protocols() -> tuple[Protocol, ...]:
    """Every protocol, in the order detection tries them."""
    from .http1 import HTTP1

    return (HTTP1(),)
