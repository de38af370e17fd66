"""Shapers: how fast bytes may flow (``[shaper.NAME]``), and how the relay obeys them."""

__all__: list[str] = []
