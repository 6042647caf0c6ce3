"""Fixtures of the online learner tests (the broker fixture comes from stream.testing)."""

from __future__ import annotations
