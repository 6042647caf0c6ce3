"""``LocalStack``: PostgreSQL, Redis and a Kafka-compatible broker as child processes."""

from __future__ import annotations

import os
import shlex
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Protocol

from personalization.config import Settings, configured_service_urls, get_settings
from personalization_dev.stack._proc import ProcessIdentity, log_event, port_is_free
from personalization_dev.stack.errors import StackError
from personalization_dev.stack.postgres import LocalPostgres
from personalization_dev.stack.redis import LocalRedis
from personalization_dev.stack.state import (
    StackLock,
    StackState,
    read_state,
    remove_state,
    running_owner,
    write_state,
)

DEFAULT_ROOT = Path(".personalization")
# initdb writes ~40 MB; PostgreSQL then needs room for WAL segments (16 MB each) and
# Redis for its AOF.  Below this, starting would only fail later and less clearly.
DEFAULT_MIN_FREE_BYTES = 256 * 1024 * 1024


class Broker(Protocol):
    """What the stack needs of a Kafka-compatible broker (``LocalBroker`` fits)."""

    def start(self) -> str:
        """Start and return the bootstrap servers string."""
        ...

    def stop(self) -> None:
        """Stop; idempotent."""
        ...

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        ...


def _default_broker(port: int) -> Broker:
    from personalization_dev.broker import LocalBroker

    return LocalBroker(port=port or None)


@dataclass(frozen=True)
class StackUrls:
    """Where the local services listen, as the ``PERSONALIZATION_*`` settings want them."""

    database_url: str
    redis_url: str
    kafka_bootstrap_servers: str

    def as_env(self) -> dict[str, str]:
        """The environment variables that point every command at this stack."""
        return {
            "PERSONALIZATION_DATABASE_URL": self.database_url,
            "PERSONALIZATION_REDIS_URL": self.redis_url,
            "PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
        }

    def export_lines(self) -> list[str]:
        """``export NAME=value`` lines for a POSIX shell."""
        return [f"export {k}={shlex.quote(v)}" for k, v in self.as_env().items()]

    def apply_to_environ(self) -> None:
        """Point this process (and the children it starts) at these services.

        Sets the ``PERSONALIZATION_*`` URL variables and drops the cached settings so
        the next ``get_settings()`` reads them.
        """
        os.environ.update(self.as_env())
        get_settings.cache_clear()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> StackUrls:
        """The URLs the settings point at (configured services)."""
        s = settings or get_settings()
        return cls(s.database.url, s.redis.url, s.kafka.bootstrap_servers)


@dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its data and which ports it uses (0 = pick a free one)."""

    root: Path = DEFAULT_ROOT
    pg_port: int = 0
    redis_port: int = 0
    kafka_port: int = 0
    # Account PostgreSQL runs as when we are root (created if missing).
    pg_user: str | None = None
    # Extra PostgreSQL settings as (name, value) pairs, passed as ``-c name=value``
    # after the stack's own (so they win), e.g. (("max_connections", "200"),).
    pg_settings: tuple[tuple[str, str], ...] = ()
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    start_timeout_s: float = 60.0
    apply_migrations: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        """Read ``PERSONALIZATION_STACK_{DIR,PG_PORT,REDIS_PORT,KAFKA_PORT}``."""
        e = os.environ if env is None else env

        def port(name: str) -> int:
            raw = e.get(name, "0") or "0"
            try:
                value = int(raw)
            except ValueError:
                raise StackError(f"{name}={raw!r} is not a port number") from None
            if not 0 <= value <= 65535:
                raise StackError(f"{name}={value} is not a port number (0-65535)")
            return value

        return cls(
            root=Path(e.get("PERSONALIZATION_STACK_DIR") or DEFAULT_ROOT),
            pg_port=port("PERSONALIZATION_STACK_PG_PORT"),
            redis_port=port("PERSONALIZATION_STACK_REDIS_PORT"),
            kafka_port=port("PERSONALIZATION_STACK_KAFKA_PORT"),
        )


def stack_needed() -> bool:
    """True when no ``PERSONALIZATION_*`` service URL is set: configured URLs always win."""
    return not configured_service_urls()


StepCallback = Callable[[str, int, int], None]
"""Called as ``(description, steps_done, steps_total)`` before each step and at the end."""

START_STEPS = (
    "Checking the stack directory",
    "PostgreSQL: preparing the data directory",
    "PostgreSQL: starting",
    "PostgreSQL: applying migrations",
    "Redis: starting",
    "Kafka broker: starting",
)
STOP_STEPS = ("Kafka broker: stopping", "Redis: stopping", "PostgreSQL: stopping")


def _apply_migrations(database_url: str) -> list[str]:
    from personalization.store.migrate import upgrade

    return upgrade(database_url)


class LocalStack:
    """PostgreSQL, Redis and a Kafka-compatible broker for one machine, as child processes.

    Usage (the servers stop when the block ends, or when this process dies)::

        with LocalStack() as urls:
            os.environ.update(urls.as_env())

    Data lives under ``config.root`` (``./.personalization`` by default): the
    PostgreSQL data directory, the Redis append-only file, the logs, a lock that
    makes the directory single-owner, and a state file for ``stack down``.  The
    broker keeps its topics in memory only.  Call ``start`` from a thread that lives
    as long as the stack (normally the main thread): Linux delivers the
    parent-death signal when the *thread* that started a child exits.
    """

    def __init__(
        self,
        config: StackConfig | None = None,
        *,
        broker_factory: Callable[[int], Broker] | None = None,
    ) -> None:
        """Configure the stack; nothing starts until ``start``."""
        self.config = config or StackConfig()
        self.root = self.config.root.resolve()
        self._broker_factory = broker_factory or _default_broker
        self._lock = StackLock(self.root)
        self.postgres = LocalPostgres(
            self.root / "postgres",
            self.root / "logs" / "postgres.log",
            port=self.config.pg_port,
            run_as=self.config.pg_user,
            start_timeout_s=self.config.start_timeout_s,
            settings=self.config.pg_settings,
        )
        self.redis = LocalRedis(
            self.root / "redis",
            self.root / "logs" / "redis.log",
            port=self.config.redis_port,
            start_timeout_s=self.config.start_timeout_s,
        )
        self.broker: Broker | None = None
        self.urls: StackUrls | None = None
        self.migrations_applied: list[str] = []
        self._notices: list[str] = []

    @property
    def notices(self) -> list[str]:
        """Things the operator should know about this start (recoveries, changes made)."""
        return [*self._notices, *self.postgres.notices]

    # ------------------------------------------------------------------ start
    def start(self, progress: StepCallback | None = None) -> StackUrls:
        """Start every server (recovering from a crashed run first); returns the URLs.

        On any failure everything already started is stopped again before the
        StackError propagates, so a failed start leaves no process behind.
        """
        if self.urls is not None:
            return self.urls
        report = progress or (lambda _d, _i, _n: None)
        total = len(START_STEPS)
        t0 = time.monotonic()
        try:
            report(START_STEPS[0], 0, total)
            self._prepare_root()
            self._lock.acquire()
            stale = read_state(self.root)
            if stale is not None:
                # Only a run that never reached stop() leaves its state file behind.
                log_event("stack.stale.found", previous_pid=stale.pid)
                self._notices.append(
                    f"the previous run (pid {stale.pid}) did not stop cleanly; its leftovers were checked and cleared"
                )
            self._check_ports()
            self._check_disk()
            state = StackState(pid=os.getpid(), started_at=time.time())
            write_state(self.root, state)

            report(START_STEPS[1], 1, total)
            self.postgres.recover_stale(stale.children.get("postgres") if stale else None)
            self.redis.recover_stale(stale.children.get("redis") if stale else None)
            self.postgres.ensure_initialized()

            report(START_STEPS[2], 2, total)
            database_url = self.postgres.start()
            self._record_child(state, "postgres", self.postgres.identity())

            report(START_STEPS[3], 3, total)
            if self.config.apply_migrations:
                self.migrations_applied = _apply_migrations(database_url)
                log_event("stack.postgres.migrated", applied=len(self.migrations_applied))

            report(START_STEPS[4], 4, total)
            redis_url = self.redis.start()
            self._record_child(state, "redis", self.redis.identity())

            report(START_STEPS[5], 5, total)
            self.broker = self._broker_factory(self.config.kafka_port)
            try:
                bootstrap = self.broker.start()
            except RuntimeError as exc:  # BrokerStartError and friends
                raise StackError(f"the Kafka broker did not start: {exc}") from exc

            self.urls = StackUrls(database_url, redis_url, bootstrap)
            state.urls = self.urls.as_env()
            write_state(self.root, state)
            report("Ready", total, total)
            log_event("stack.up", seconds=round(time.monotonic() - t0, 2), root=self.root)
            return self.urls
        except BaseException:
            # BaseException: a Ctrl-C or `stack down` mid-start must not leave servers.
            self.stop()
            raise

    def _prepare_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # Other users (the PostgreSQL run-as account) must be able to enter it.
            self.root.chmod(0o755)
        except OSError as exc:
            raise StackError(f"cannot create the stack directory {self.root}: {exc}") from exc

    def _check_ports(self) -> None:
        for name, port, flag in (
            ("PostgreSQL", self.config.pg_port, "--pg-port"),
            ("Redis", self.config.redis_port, "--redis-port"),
            ("the Kafka broker", self.config.kafka_port, "--kafka-port"),
        ):
            if port and not port_is_free(port):
                raise StackError(
                    f"port {port} for {name} is already in use. Fix: stop what holds it, "
                    f"choose another with {flag}, or pass {flag} 0 for a free one"
                )

    def _check_disk(self) -> None:
        free = shutil.disk_usage(self.root).free
        if free < self.config.min_free_bytes:
            raise StackError(
                f"only {free // 2**20} MiB free on the disk holding {self.root}; the local "
                f"stack needs at least {self.config.min_free_bytes // 2**20} MiB. Fix: free "
                "some space (df -h shows it) or use a stack directory on a disk with room (--root)"
            )

    def _record_child(self, state: StackState, name: str, ident: ProcessIdentity | None) -> None:
        if ident is not None:
            state.children[name] = ident
            write_state(self.root, state)

    # ------------------------------------------------------------------ watch
    @property
    def active(self) -> bool:
        """True from a successful lock in ``start`` until ``stop`` (servers may be up)."""
        return self._lock.held

    def failed(self) -> dict[str, str]:
        """Servers that were started and have since exited, each with what its log says.

        A server dying under a running stack is an error (a full disk is the usual
        cause); the caller should report it and ``stop`` the rest.
        """
        dead: dict[str, str] = {}
        if self.urls is not None:
            if not self.postgres.alive():
                dead["postgres"] = self.postgres.explain_exit()
            if not self.redis.alive():
                dead["redis"] = self.redis.explain_exit()
            if self.broker is not None and not self.broker.running:
                dead["kafka"] = "the Kafka broker exited"
        return dead

    # ------------------------------------------------------------------- stop
    def stop(self, progress: StepCallback | None = None) -> None:
        """Stop every server (broker, Redis, then PostgreSQL) and release the directory."""
        report = progress or (lambda _d, _i, _n: None)
        total = len(STOP_STEPS)
        errors: list[BaseException] = []
        for i, (step, stop) in enumerate(
            zip(STOP_STEPS, (self._stop_broker, self.redis.stop, self.postgres.stop), strict=True)
        ):
            report(step, i, total)
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                log_event("stack.stop.error", step=step, error=exc)
                errors.append(exc)
        if self._lock.held:
            remove_state(self.root)
        self._lock.release()
        self.urls = None
        report("Stopped", total, total)
        log_event("stack.down", root=self.root)
        if errors:
            raise StackError(f"stopping the stack failed: {errors[0]}") from errors[0]

    def _stop_broker(self) -> None:
        broker, self.broker = self.broker, None
        if broker is not None:
            broker.stop()

    def __enter__(self) -> StackUrls:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextmanager
def configured_or_local(config: StackConfig | None = None, progress: StepCallback | None = None) -> Iterator[StackUrls]:
    """The services to use: configured ones, else a running local stack, else a new one.

    * Any ``PERSONALIZATION_*`` URL set: the settings' URLs (configured services win).
    * A ``stack up`` already running from the stack directory: its URLs, left running.
    * Otherwise a local stack started for the duration of the block.

    In the last two cases the URLs are put into ``os.environ`` (and the settings
    cache is reset) for the block, so that code reading ``get_settings()`` uses
    them.  This is what ``personalization demo`` needs.
    """
    if not stack_needed():
        yield StackUrls.from_settings()
        return
    cfg = config or StackConfig.from_env()
    saved = {k: os.environ.get(k) for k in StackUrls("", "", "").as_env()}
    stack: LocalStack | None = None
    running = running_owner(cfg.root.resolve())
    if running is not None and len(running.urls) == 3:
        log_event("stack.reuse", pid=running.pid, root=cfg.root)
        urls = StackUrls(
            running.urls["PERSONALIZATION_DATABASE_URL"],
            running.urls["PERSONALIZATION_REDIS_URL"],
            running.urls["PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS"],
        )
    else:
        stack = LocalStack(cfg)
        urls = stack.start(progress)
    try:
        urls.apply_to_environ()
        yield urls
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
        if stack is not None:
            stack.stop()


@contextmanager
def platform_stack(root: Path, progress: StepCallback | None = None) -> Iterator[dict[str, str]]:
    """The ``personalization.local_stack`` entry point that ``personalization up`` looks up.

    The stack keeps its data in ``root`` (the platform's data directory) unless
    ``PERSONALIZATION_STACK_DIR`` names another; a ``stack up`` already running there is
    reused.  Yields the ``PERSONALIZATION_*`` URLs.
    """
    cfg = StackConfig.from_env()
    if not os.environ.get("PERSONALIZATION_STACK_DIR"):
        cfg = replace(cfg, root=root)
    with configured_or_local(cfg, progress) as urls:
        yield urls.as_env()
