"""Capture of every final task failure, replay and discard."""
