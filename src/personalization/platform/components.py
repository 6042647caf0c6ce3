"""What ``personalization up`` runs: the registry of components and a node's plan.

A component is one ``personalization ...`` command run as a supervised child process
(``learner`` may run as several, ``learner-1``, ``learner-2``, ...).  The registry is
open: a background worker that another part of the platform adds (erasure completion,
invalidation replay, exposure flushing, model training) is one more entry in
:data:`COMPONENTS`, usually ``worker(role, summary, *cli_args, ...)`` (or a :func:`register`
call), with the command that runs it, where it stops in the shutdown order and which lag
it reports.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

LagKind = Literal["none", "http", "cdc_slot", "learner_group", "consumer_group", "nightly", "pending_rows"]
"""Which lag ``status`` reads live for a component (dispatched in :mod:`personalization.platform.lag`)."""


@dataclass(frozen=True)
class NodeOptions:
    """What one ``up`` invocation decided for its children."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_workers: int = 1
    learners: int = 1
    # The supervisor started the embedded stack: its Kafka-compatible broker can lock up a
    # consumer group that every member left (a crash of a lone member does that), so
    # consumer groups get a fresh name per start there.  Positions that matter are not in
    # those groups: the learner keeps its own in PostgreSQL, the invalidator's replay is
    # idempotent.  Against a real cluster the configured, stable group names are used.
    embedded_broker: bool = False
    run_token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    learner_group: str = "personalization-learner"
    learner_kafka_group: str | None = None
    learner_metrics_port: int = 0
    invalidator_group: str = "personalization-cache-invalidation"

    @property
    def api_url(self) -> str:
        """The API's base URL as a client on this host reaches it."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class Launch:
    """One start of a child: its command line, environment overrides and status details."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    detail: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChildSpec:
    """One supervised child process of a node's plan."""

    name: str
    role: str
    launch: Callable[[int], Launch]
    """The command of the ``generation``-th start (0 first, 1 after the first restart...)."""
    stop_stage: int
    stop_grace_s: float
    lag: LagKind
    url: str | None = None


@dataclass(frozen=True)
class ComponentSpec:
    """A registered component: ``expand`` turns it into the node's child processes."""

    role: str
    summary: str
    stop_stage: int
    """Shutdown order: stage 0 stops first (the API stops taking writes before the relay
    flushes them to Kafka, and the relay before the learners that consume them)."""
    stop_grace_s: float
    """How long SIGTERM may take before SIGKILL (capped by the shutdown bound)."""
    expand: Callable[[ComponentSpec, NodeOptions], list[ChildSpec]]


def _cli(*args: str) -> list[str]:
    # The same interpreter and package as the supervisor (a virtualenv need not be on PATH).
    return [sys.executable, "-m", "personalization.cli", *args]


def _api(spec: ComponentSpec, opts: NodeOptions) -> list[ChildSpec]:
    argv = _cli("serve", "--host", opts.host, "--port", str(opts.port), "--workers", str(opts.api_workers))

    def launch(_generation: int) -> Launch:
        return Launch(argv, detail={"workers": str(opts.api_workers)})

    return [ChildSpec("api", spec.role, launch, spec.stop_stage, spec.stop_grace_s, "http", url=opts.api_url)]


def _relay(spec: ComponentSpec, opts: NodeOptions) -> list[ChildSpec]:
    def launch(_generation: int) -> Launch:
        return Launch(_cli("cdc", "run"))

    return [ChildSpec("relay", spec.role, launch, spec.stop_stage, spec.stop_grace_s, "cdc_slot")]


def _learners(spec: ComponentSpec, opts: NodeOptions) -> list[ChildSpec]:
    out: list[ChildSpec] = []
    n = opts.learners
    for i in range(1, n + 1):
        name = "learner" if n == 1 else f"learner-{i}"
        port = opts.learner_metrics_port + i - 1 if opts.learner_metrics_port else 0

        def launch(generation: int, port: int = port) -> Launch:
            env: dict[str, str] = {}
            kafka_group = opts.learner_kafka_group or opts.learner_group
            if opts.embedded_broker:
                # Several learners share one group for the run (they split the partitions);
                # a lone learner gets a new one per start (see NodeOptions.embedded_broker).
                kafka_group = f"{kafka_group}.{opts.run_token}" + (f".{generation}" if n == 1 else "")
                env["PERSONALIZATION_LEARNER_KAFKA_GROUP_ID"] = kafka_group
            argv = _cli("learner", "run", "--metrics-port", str(port))
            return Launch(argv, env, {"learner_group": opts.learner_group, "kafka_group": kafka_group})

        out.append(ChildSpec(name, spec.role, launch, spec.stop_stage, spec.stop_grace_s, "learner_group"))
    return out


def _invalidator(spec: ComponentSpec, opts: NodeOptions) -> list[ChildSpec]:
    def launch(generation: int) -> Launch:
        group = opts.invalidator_group
        if opts.embedded_broker:
            group = f"{group}.{opts.run_token}.{generation}"
        return Launch(_cli("cdc", "invalidate-cache", "--group-id", group), detail={"kafka_group": group})

    return [ChildSpec("invalidator", spec.role, launch, spec.stop_stage, spec.stop_grace_s, "consumer_group")]


def _scheduler(spec: ComponentSpec, opts: NodeOptions) -> list[ChildSpec]:
    def launch(_generation: int) -> Launch:
        return Launch(_cli("jobs", "schedule"))

    return [ChildSpec("scheduler", spec.role, launch, spec.stop_stage, spec.stop_grace_s, "nightly")]


def worker(
    role: str, summary: str, *cli_args: str, stop_stage: int = 2, stop_grace_s: float = 15.0,
    lag: LagKind = "none", detail: dict[str, str] | None = None,
) -> ComponentSpec:
    """A background worker: one child named ``role`` running ``personalization *cli_args``.

    For example ``worker("exposures", "exposure flusher", "experiments", "flush-exposures")``;
    with ``lag="pending_rows"``, ``detail`` names its backlog: ``{"pending_relation": table}``
    (every row counts, as in an outbox), plus ``"pending_query"``, a named count query in
    ``store/sql/platform.sql``, where only some rows are pending.
    """

    def expand(spec: ComponentSpec, opts: NodeOptions) -> list[ChildSpec]:
        def launch(_generation: int) -> Launch:
            return Launch(_cli(*cli_args), detail=dict(detail or {}))

        return [ChildSpec(spec.role, spec.role, launch, spec.stop_stage, spec.stop_grace_s, lag)]

    return ComponentSpec(role, summary, stop_stage, stop_grace_s, expand)


COMPONENTS: list[ComponentSpec] = [
    ComponentSpec("api", "HTTP API (`serve --workers N`)", 0, 20.0, _api),
    ComponentSpec("relay", "Debezium change-stream relay to Kafka (`cdc run`)", 1, 30.0, _relay),
    ComponentSpec("learner", "online learner(s) (`learner run`)", 2, 20.0, _learners),
    ComponentSpec("invalidator", "cache-invalidation consumer (`cdc invalidate-cache`)", 2, 10.0, _invalidator),
    ComponentSpec("scheduler", "nightly job scheduler (`jobs schedule`)", 2, 15.0, _scheduler),
    # The data-rights workers (docs/datarights.md).  Every API process runs them too
    # (PERSONALIZATION_BACKGROUND_WORKERS); they take their rows with SKIP LOCKED, so these
    # children and the API processes share the backlog, and a node without the API role
    # (a worker node) still completes erasures and replays invalidations.
    worker("erasures", "erasure completion (`workers run erasures`)", "workers", "run", "erasures",
           lag="pending_rows", detail={"pending_relation": "erasures", "pending_query": "pending_erasures"}),
    worker("invalidations", "cache-invalidation outbox replay (`workers run invalidations`)", "workers", "run",
           "invalidations", lag="pending_rows", detail={"pending_relation": "cache_invalidations"}),
]
"""Every component a node can run, in start order (roles are these ``role`` names)."""


def register(spec: ComponentSpec) -> None:
    """Add a component (a background worker) to the registry; its role must be new."""
    if any(c.role == spec.role for c in COMPONENTS):
        raise ValueError(f"a component with role {spec.role!r} is already registered")
    COMPONENTS.append(spec)


def known_roles() -> list[str]:
    """Every registered role, in start order."""
    return [c.role for c in COMPONENTS]


class UnknownRole(ValueError):
    """A role given to ``--only`` (or the setting) that no component has."""


def plan(roles: Sequence[str], opts: NodeOptions) -> list[ChildSpec]:
    """The children of a node running ``roles`` (empty: every component), in start order."""
    wanted = [r.strip() for r in roles if r.strip()]
    unknown = [r for r in wanted if r not in known_roles()]
    if unknown:
        raise UnknownRole(f"unknown role {unknown[0]!r} (known: {', '.join(known_roles())})")
    chosen = [c for c in COMPONENTS if not wanted or c.role in wanted]
    children = [child for c in chosen for child in c.expand(c, opts)]
    return children
