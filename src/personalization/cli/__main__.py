"""``python -m personalization.cli``."""

from personalization.cli.main import app

app()
