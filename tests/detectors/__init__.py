"""Tests for the built-in detectors."""
