"""``personalization cdc ...``: run, inspect and retire the Debezium change-stream relay.

Exit codes (:mod:`personalization.cli.common`): 0 success, 1 the relay or Debezium failed,
2 bad usage (a missing ``--yes``) or the database is not set up for change capture (the
message names the fix), 3 the slot is in use by a running relay (``drop-slot``,
``reset-offsets``), 4 PostgreSQL unreachable.  Recovery after a lost slot or stale offsets
(database restored or recreated, slot dropped)::

    personalization cdc reset-offsets --yes           # re-create the slot, forget offsets
    personalization cdc run                           # resume from now, or:
    personalization cdc run --snapshot-mode initial   # re-send every current row first

Retiring the relay: ``personalization cdc drop-slot --yes`` (drops slot, publication and
stored offsets, so PostgreSQL stops keeping WAL for it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from personalization.cli.common import ExitCode, fail, load_settings
from personalization.config import Settings, SnapshotMode
from personalization.kafka import names

if TYPE_CHECKING:
    from personalization.store.changestream import AdminConnection

app = typer.Typer(help="Debezium change-data-capture relay to Kafka.", no_args_is_help=True)

_YES = typer.Option("--yes", help="Confirm the destructive operation.")


def _settings(**cdc: object) -> Settings:
    return load_settings(cdc=cdc)


@contextlib.contextmanager
def _admin(settings: Settings) -> Iterator[AdminConnection]:
    """An admin connection; a setup problem exits 2, a slot in use 3, PostgreSQL unreachable 4."""
    from personalization.changestream import pgadmin
    from personalization.errors import StoreUnavailable

    try:
        with pgadmin.connect(settings) as conn:
            yield conn
    except pgadmin.SlotInUse as exc:
        fail(str(exc), ExitCode.REFUSED)
    except pgadmin.CdcSetupError as exc:
        fail(str(exc), ExitCode.BAD_INPUT)
    except StoreUnavailable as exc:
        fail(f"cannot reach PostgreSQL: {exc}", ExitCode.UNAVAILABLE)


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-5s [%(name)s] %(message)s",
    )


@app.command()
def run(
    snapshot_mode: Annotated[
        SnapshotMode | None,
        typer.Option(help="no_data: stream from the slot; initial: first emit every row."),
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus port (0 disables; default 9465).")] = None,
    offsets_file: Annotated[str | None, typer.Option(help="Store offsets in this file instead of PostgreSQL.")] = None,
) -> None:
    """Stream personalization_events (and profile/trait) changes to Kafka until stopped."""
    from personalization.changestream.relay import run_relay

    _logging()
    settings = _settings(
        snapshot_mode=snapshot_mode,
        metrics_port=metrics_port,
        offsets_file=offsets_file,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = run_relay(settings, stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    raise typer.Exit(code)


@app.command()
def status() -> None:
    """Print the slot, its retained WAL and the stored offset as one JSON line."""
    from personalization.changestream import pgadmin

    settings = _settings()
    with _admin(settings) as conn:
        slot = pgadmin.read_slot(conn, settings.cdc.slot_name)
        lsn = pgadmin.stored_lsn(conn, settings)
    out = {
        "slot": None if slot is None else slot.__dict__,
        "stored_lsn": lsn,
        "topic": names.events_topic(settings.kafka.topic_prefix),
    }
    typer.echo(json.dumps(out))


@app.command("drop-slot")
def drop_slot(
    yes: Annotated[bool, _YES] = False,
    keep_offsets: Annotated[bool, typer.Option(help="Keep the stored offsets (default: drop them too).")] = False,
) -> None:
    """Retire the relay: drop its replication slot, publication and stored offsets."""
    from personalization.changestream import pgadmin

    if not yes:
        fail("refusing without --yes: this stops change capture for good", ExitCode.BAD_INPUT)
    settings = _settings()
    with _admin(settings) as conn:
        dropped = pgadmin.drop_slot_and_publication(conn, settings, keep_offsets=keep_offsets)
    typer.echo("dropped: " + (", ".join(dropped) if dropped else "nothing (already retired)"))


@app.command("reset-offsets")
def reset_offsets(yes: Annotated[bool, _YES] = False) -> None:
    """Recover from a lost slot or stale offsets: forget offsets, re-create the slot now."""
    from personalization.changestream import pgadmin

    if not yes:
        fail("refusing without --yes: changes not yet streamed may be skipped", ExitCode.BAD_INPUT)
    settings = _settings()
    with _admin(settings) as conn:
        pgadmin.drop_slot_and_publication(conn, settings, keep_offsets=False)
        pgadmin.preflight(conn, settings)
        pgadmin.ensure_publication_and_slot(conn, settings)
    typer.echo(f"slot {settings.cdc.slot_name} re-created; offsets cleared")


@app.command("invalidate-cache")
def invalidate_cache(
    group_id: Annotated[str, typer.Option(help="Kafka consumer group.")] = ("personalization-cache-invalidation"),
) -> None:
    """Consume profile/trait changes and invalidate the users' cached preferences (as the API does)."""
    from personalization.cache.serving import generation_invalidator
    from personalization.serving.invalidation import run_invalidation_consumer

    _logging()
    settings = _settings()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run_invalidation_consumer(
        settings.kafka.bootstrap_servers,
        settings.kafka.topic_prefix,
        generation_invalidator(settings.redis.url),
        stop=stop,
        group_id=group_id or f"personalization-cache-{uuid.uuid4()}",
    )


if __name__ == "__main__":
    app()
