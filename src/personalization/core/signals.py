"""The registry of signal types: which ``signal_type`` values ingest accepts and the learner scores.

``personalization_events.signal_type`` is free TEXT in the specification (its examples:
bookmark, share, skip), so without a registry a typo ("lik") is stored for ever and scored
by the learner with the default decay.  The known set is the union of

* the built-in types: the decay defaults of :mod:`personalization.core.decay` (view, read,
  complete, bookmark, share, skip) and ``highlight`` (scored with the default decay);
* the decay's configured types (the keys of ``PERSONALIZATION_LEARNER_SIGNALS``, ``decay.signals``);
* the types an operator adds (``PERSONALIZATION_SIGNAL_TYPES_EXTRA``, ``ingest.signal_types_extra``).

A deployment may accept any well-formed type (``PERSONALIZATION_SIGNAL_TYPES_OPEN``,
``ingest.signal_types_open``); the learner still scores only known types then.  A process
gets its registry from :meth:`personalization.config.Settings.signal_types`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from personalization.core.decay import DEFAULT_SIGNALS

BUILTIN_SIGNAL_TYPES: Final[tuple[str, ...]] = (*DEFAULT_SIGNALS, "highlight")
# What a configured (extra) type may look like: a short lowercase identifier, so that a
# stray space or an empty item in the setting is caught at start-up.
SIGNAL_TYPE_NAME: Final = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
UNKNOWN_SIGNAL_TYPE: Final = "unknown_signal_type"


def check_names(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` unchanged if each is a valid signal type name; ValueError naming the bad one otherwise.

    The settings tree (``ingest.signal_types_extra``) names the variable in front of the message.
    """
    out = tuple(names)
    for name in out:
        if not SIGNAL_TYPE_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a signal type name (lowercase letters, digits, "
                             "'_', '.', ':' or '-', starting with a letter, at most 64 characters)")
    return out


@dataclass(frozen=True)
class SignalTypes:
    """The known signal types of a deployment, and whether others are accepted too."""

    known: frozenset[str]
    open: bool = False

    def accepts(self, signal_type: str) -> bool:
        """True if ingest stores an event of this type."""
        return self.open or signal_type in self.known

    def unknown_message(self, signal_type: str) -> str:
        """The 422 message for a type not accepted: it names the known ones."""
        return (f"unknown signal type {signal_type!r}; known types: {', '.join(sorted(self.known))} "
                "(PERSONALIZATION_SIGNAL_TYPES_EXTRA adds types)")


def signal_types(*, extra: Iterable[str] = (), learner: Iterable[str] = (), open_types: bool = False) -> SignalTypes:
    """The registry: built-in types, the learner's configured ones and the operator's extra ones."""
    return SignalTypes(frozenset((*BUILTIN_SIGNAL_TYPES, *learner, *extra)), open_types)


BUILTIN: Final = signal_types()
