"""Built-in route actions (``forward``, ``respond``, ``reject``, ``app``), one per module."""

__all__: list[str] = []
