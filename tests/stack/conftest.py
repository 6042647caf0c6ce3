"""Fixtures for the local-stack tests: stack directories PostgreSQL's account can reach."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def stack_root() -> Iterator[Path]:
    """A fresh stack directory under a world-traversable temporary folder.

    pytest's own ``tmp_path`` lives under a 0700 folder; when the tests run as root,
    PostgreSQL runs as an unprivileged account that could not enter it.
    """
    base = Path(tempfile.mkdtemp(prefix="pstack-"))
    base.chmod(0o755)
    try:
        yield base / "stack"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No configured service URLs, as on a fresh machine."""
    for name in list(os.environ):
        if name.startswith("PERSONALIZATION_"):
            monkeypatch.delenv(name)
