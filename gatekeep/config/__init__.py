"""Loading and validating gatekeep's TOML config; errors name the TOML path."""

__all__: list[str] = []
