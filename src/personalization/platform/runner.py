"""``personalization up`` end to end: services, schema, topics, then the supervised children.

With no ``PERSONALIZATION_*`` service URL configured, the embedded local stack is started
first.  It belongs to the development tooling, which the product never imports: the
tooling registers a factory in the ``personalization.local_stack`` entry-point group
(``pyproject.toml``) and this module looks it up at run time, so an installation without
the tooling says what to configure instead.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

from personalization.config import SERVICE_URL_VARS, Settings, configured_service_urls
from personalization.errors import PersonalizationError
from personalization.platform.components import NodeOptions, plan
from personalization.platform.logs import LogSink
from personalization.platform.state import PlatformLock
from personalization.platform.supervisor import RestartPolicy, Supervisor, SupervisorConfig

LOCAL_STACK_GROUP = "personalization.local_stack"

StepCallback = Callable[[str, int, int], None]


class LocalStackFactory(Protocol):
    """What a ``personalization.local_stack`` entry point is: ``(root, progress) -> context of env``."""

    def __call__(self, root: Path, progress: StepCallback | None) -> AbstractContextManager[dict[str, str]]:
        """A context manager that runs the stack and yields its ``PERSONALIZATION_*`` URLs."""
        ...


class PlatformError(PersonalizationError):
    """``up`` cannot start: the message says why and what to do."""


class PortInUse(PlatformError):
    """The API's port is taken (bad input: another port is the fix)."""


@dataclass(frozen=True)
class UpOptions:
    """The choices of one ``up`` invocation (the CLI's options over the settings)."""

    roles: tuple[str, ...]
    host: str
    port: int
    api_workers: int
    learners: int
    log_dir: Path | None
    stop_timeout_s: float


def _local_stack(root: Path, progress: StepCallback | None) -> AbstractContextManager[dict[str, str]]:
    found = sorted(entry_points(group=LOCAL_STACK_GROUP), key=lambda e: e.name)
    if not found:
        raise PlatformError(
            "no service is configured and the embedded stack is not installed: set "
            f"{', '.join(SERVICE_URL_VARS)} to your services, or install the development tooling "
            "(pip install -e '.[all]')"
        )
    factory: LocalStackFactory = found[0].load()
    return factory(root, progress)


@contextlib.contextmanager
def services(settings: Settings, progress: StepCallback | None) -> Iterator[tuple[dict[str, str], bool]]:
    """The service URLs to use and whether the embedded stack provides them."""
    if configured_service_urls():
        yield {"PERSONALIZATION_DATABASE_URL": settings.database.url, "PERSONALIZATION_REDIS_URL": settings.redis.url,
               "PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers}, False
        return
    with _local_stack(settings.platform.data_dir, progress) as env:
        yield dict(env), True


def free_port(host: str) -> int:
    """A port that is free on ``host`` right now (for ``--port 0``)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (the API would crash-loop on a taken port)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _prepare(settings: Settings, service_env: dict[str, str], roles: set[str]) -> None:
    """Schema first (every component needs it), then the CDC topics the consumers read."""
    from personalization.changestream.capture import captured_topics
    from personalization.store import migrate

    migrate.upgrade(service_env["PERSONALIZATION_DATABASE_URL"])
    if roles & {"relay", "learner", "invalidator"}:
        from personalization.kafka.topics import ensure_topics

        bootstrap = service_env["PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS"]
        try:
            ensure_topics(bootstrap, captured_topics(settings), timeout_s=30.0)
        except Exception as exc:  # KafkaException: the broker is unreachable or refuses
            raise PlatformError(f"cannot create the CDC topics on {bootstrap}: {exc}") from exc


def node_options(settings: Settings, opts: UpOptions, embedded: bool) -> NodeOptions:
    """The children's options: the learner and invalidator groups from their sections."""
    learner = settings.learner
    return NodeOptions(
        host=opts.host, port=opts.port, api_workers=opts.api_workers, learners=opts.learners,
        embedded_broker=embedded, learner_group=learner.group_id,
        learner_kafka_group=learner.kafka_group_id, learner_metrics_port=learner.metrics_port,
        invalidator_group=settings.platform.invalidator_group,
    )


def export_lines(env: dict[str, str]) -> list[str]:
    """``export NAME=value`` lines for a POSIX shell."""
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def run_up(
    settings: Settings,
    opts: UpOptions,
    stop: threading.Event,
    sink: LogSink,
    announce: Callable[[list[str]], None],
    progress: StepCallback | None = None,
) -> int:
    """Run the node until ``stop`` is set; returns the exit code (0 after an orderly stop).

    ``announce`` receives the ``export`` lines once every child is started and the API
    answers.  Raises PlatformError (or the store's errors) when the node cannot start.
    """
    platform = settings.platform
    directory = platform.state_dir.resolve()
    lock = PlatformLock(directory)
    lock.acquire()
    try:
        with services(settings, progress) as (service_env, embedded):
            if stop.is_set():
                return 0
            options = node_options(settings, opts, embedded)
            if opts.port == 0:
                options = replace(options, port=free_port(opts.host))
            children = plan(opts.roles, options)
            roles = {c.role for c in children}
            if "api" in roles and opts.port != 0 and not port_is_free(opts.host, opts.port):
                raise PortInUse(
                    f"port {opts.port} on {opts.host} is already in use; stop what holds it, or choose "
                    "another with --port (0: a free one) or PERSONALIZATION_HTTP_PORT"
                )
            _prepare(settings, service_env, roles)
            if stop.is_set():  # SIGTERM while the schema was migrated: start nothing
                return 0
            api_url = options.api_url if "api" in roles else None
            env = {**os.environ, **service_env, "PERSONALIZATION_DATA_DIR": str(platform.data_dir.resolve()),
                   "PYTHONUNBUFFERED": "1"}
            # Status reads the lag through these (and the topic names from the prefix).
            state_services = {**service_env, "PERSONALIZATION_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix}
            config = SupervisorConfig(
                directory=directory, env=env, roles=sorted(roles), services=state_services, embedded_stack=embedded,
                api_url=api_url, stop_timeout_s=opts.stop_timeout_s, log_dir=opts.log_dir,
                api_start_timeout_s=platform.api_start_timeout_s,
                policy=RestartPolicy(platform.restart_initial_s, platform.restart_max_s,
                                     platform.stable_after_s, platform.failing_after),
            )
            # What this run started (the embedded stack's URLs, the API) and where its state
            # is, so that `status` in a shell that sourced these lines finds it.
            exports = {**service_env} if embedded else {}
            exports["PERSONALIZATION_DATA_DIR"] = str(platform.data_dir.resolve())
            if api_url is not None:
                exports["PERSONALIZATION_API_URL"] = api_url
            supervisor = Supervisor(children, config, sink)
            return supervisor.run(stop, on_ready=lambda: announce(export_lines(exports)))
    finally:
        lock.release()
