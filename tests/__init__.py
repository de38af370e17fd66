"""Tests for gatekeep, mirroring the package layout."""
