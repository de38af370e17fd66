"""Access rules (``[access.NAME]``) and the per-listener connection limits."""

__all__: list[str] = []
