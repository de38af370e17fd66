"""
gatekeep: one port for XMPP, Matrix, the web and more.

A Twisted gateway that looks at the first bytes of each connection, detects the
protocol with pluggable detectors, and hands the connection to a route: forward it,
answer it, or give it to an in-process Twisted application.

The public, stable API for plugin authors is :mod:`gatekeep.interfaces` and
:mod:`gatekeep.values`; everything else may change between releases.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
