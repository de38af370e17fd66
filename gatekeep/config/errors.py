"""Config errors that name the TOML path of the problem and, where we know it, the fix."""

from __future__ import annotations

import attrs

__all__ = ["ConfigError", "ConfigErrors"]


@attrs.frozen
class ConfigError:
    """One problem in a config file, at a TOML path like ``service.edge.route[2].forward.to``."""

    path: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text}\n    fix: {self.fix}" if self.fix else text


class ConfigErrors(Exception):
    """Every problem found in one pass, so a user fixes them all at once."""

    def __init__(self, errors: list[ConfigError], source: str = "") -> None:
        self.errors = errors
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: " if self.source else ""
        count = len(self.errors)
        lines = [f"{head}{count} error{'s' if count != 1 else ''} in config"]
        lines.extend(f"  {error}" for error in self.errors)
        return "\n".join(lines)
