"""
Built-in protocol detectors, one module per protocol.

Each provides :class:`gatekeep.interfaces.IDetector` and is registered through the
``gatekeep.detectors`` entry point, exactly as a third-party detector would be.
"""

__all__: list[str] = []
