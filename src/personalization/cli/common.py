"""What every ``personalization`` command shares: its exit codes and its one-line errors.

Exit codes (the same for every command):

====  ==========================================================================
0     success
1     the work failed (a runtime error; the message says what went wrong)
2     bad input or usage, nothing written: a malformed value or setting, a value
      naming something that does not exist (unknown user or key id), a file that
      cannot be read or parsed, a missing ``--yes``; Typer's own usage errors are 2
3     refused, conflict or partial: another nightly run holds the lock, a key name
      already exists, an erase recorded with parts still pending (a worker completes them)
4     a required service is unavailable (PostgreSQL, Redis or Kafka down): retry later
====  ==========================================================================
"""

from __future__ import annotations

from enum import IntEnum
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from personalization.config import Settings
from personalization.errors import CacheUnavailable, Conflict, InvalidInput, NotFound, StoreUnavailable

__all__ = ["ExitCode", "err", "exit_code_for", "fail"]

# Progress bars, notices and errors of every command go to stderr; stdout carries results only.
err = Console(stderr=True)


class ExitCode(IntEnum):
    """The exit status of every ``personalization`` command."""

    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    REFUSED = 3
    UNAVAILABLE = 4


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code of a library error that reached a command.

    Bad input and unknown ids are 2, conflicts 3 (an ``InvalidInput`` raised with
    HTTP status 409, such as a duplicate key name, is a conflict), an unreachable
    PostgreSQL or Redis 4, anything else 1.
    """
    if isinstance(exc, InvalidInput):
        return ExitCode.REFUSED if exc.status == 409 else ExitCode.BAD_INPUT
    if isinstance(exc, NotFound):
        return ExitCode.BAD_INPUT
    if isinstance(exc, Conflict):
        return ExitCode.REFUSED
    if isinstance(exc, StoreUnavailable | CacheUnavailable):
        return ExitCode.UNAVAILABLE
    return ExitCode.FAILED


def fail(msg: str, code: ExitCode) -> NoReturn:
    """Print ``error: <msg>`` as exactly one line on stderr and exit with ``code``.

    Whitespace runs (the newlines of driver messages included) collapse to one space,
    and the text is never parsed as Rich markup, so it prints verbatim: messages quote
    commands such as ``pip install -e '.[all]'`` that markup would otherwise swallow
    (``rich.markup.escape`` is not enough: it doubles a trailing backslash).
    """
    line = Text.assemble(("error:", "bold red"), " ", " ".join(msg.split()))
    err.print(line, highlight=False, soft_wrap=True)
    raise typer.Exit(int(code))


def load_settings(**sections: dict[str, object]) -> Settings:
    """The settings tree read from the environment now, with command-line overrides per section.

    Read afresh on every call (not the process-wide cache): one command invocation is one
    read, and commands run in-process one after another (tests, the demo) see the
    environment of their own invocation.  ``load_settings(cdc={"metrics_port": port})`` drops
    the None values (options not given).  An invalid ``PERSONALIZATION_*`` variable or option
    exits 2 with one line naming it.
    """
    from pydantic import ValidationError

    from personalization.config import describe_error

    try:
        settings = Settings()
        given = {name: {k: v for k, v in values.items() if v is not None} for name, values in sections.items()}
        given = {name: values for name, values in given.items() if values}
        return settings.replace(**given) if given else settings
    except ValidationError as exc:
        fail(f"invalid settings: {describe_error(exc)}", ExitCode.BAD_INPUT)
