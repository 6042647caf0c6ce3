"""Settings of ``personalization up`` (environment prefix ``PERSONALIZATION_``).

Like the relay and the learner, the supervisor reads its own knobs beside the shared
service URLs; each field maps to ``PERSONALIZATION_<FIELD>``, and the ``up`` options
override them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class PlatformSettings(BaseSettings):
    """Configuration of the supervisor and of ``personalization status``."""

    model_config = SettingsConfigDict(env_prefix="PERSONALIZATION_", extra="ignore")

    # Where the supervisor keeps its state file and lock (``<data_dir>/platform/``), and
    # the embedded stack its data when it is started (the stack's own default is the same).
    data_dir: Path = Path(".personalization")
    # Roles this node runs (``up --only``): empty means every registered component.
    platform_roles: Annotated[tuple[str, ...], NoDecode] = ()
    # API server worker processes and learner processes.
    platform_api_workers: int = Field(default=1, ge=1, le=64)
    platform_learners: int = Field(default=1, ge=1, le=64)
    # One log file per component here (``up --log-dir``) instead of the stream on stderr.
    platform_log_dir: Path | None = None
    # Kafka consumer group of the cache-invalidation consumer (`cdc invalidate-cache --group-id`).
    platform_invalidator_group: str = Field(default="personalization-cache-invalidation", min_length=1)
    # Restart back-off of a crashed child: doubled from the initial delay up to the max; a
    # child that stayed up this long is healthy again (its next crash waits the initial delay).
    platform_restart_initial_s: float = Field(default=0.5, gt=0)
    platform_restart_max_s: float = Field(default=30.0, gt=0)
    platform_stable_after_s: float = Field(default=30.0, gt=0)
    # This many crashes in a row mark a child ``failing`` (it is still retried at the max delay).
    platform_failing_after: int = Field(default=5, ge=1)
    # Bound of an orderly shutdown (SIGTERM to ``up``): every child is gone by then.
    platform_stop_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    # How long the API server may take to answer /healthz after it was started.
    platform_api_start_timeout_s: float = Field(default=120.0, gt=0)

    @field_validator("platform_roles", mode="before")
    @classmethod
    def _split_roles(cls, value: object) -> object:
        # ``PERSONALIZATION_PLATFORM_ROLES=api,learner``: a comma-separated list, like ``--only``.
        if isinstance(value, str):
            return tuple(r.strip() for r in value.split(",") if r.strip())
        return value

    @property
    def platform_dir(self) -> Path:
        """The supervisor's own directory under the data directory."""
        return self.data_dir / "platform"
