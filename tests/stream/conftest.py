"""Fixtures of the change-stream tests (the broker fixture is shared from the package)."""

pytest_plugins = ["personalization.stream.testing"]
