"""Privacy levels: what each level of ``user_profile.privacy_level`` permits.

The column is free TEXT in the specification; the application accepts only the
levels below on its write paths.  A value written by another service that is not
one of them is treated as the most restrictive level (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

PrivacyLevel = Literal["standard", "limited", "private"]
PRIVACY_LEVELS: tuple[str, ...] = get_args(PrivacyLevel)
DEFAULT_PRIVACY_LEVEL: PrivacyLevel = "standard"


@dataclass(frozen=True)
class PrivacyPolicy:
    """What may be done with one user's behavioural data."""

    store_events: bool
    keep_metadata: bool
    keep_session: bool
    personalize: bool


POLICIES: dict[str, PrivacyPolicy] = {
    # Everything: events with metadata and session, learner state, embeddings, reranking.
    "standard": PrivacyPolicy(store_events=True, keep_metadata=True, keep_session=True, personalize=True),
    # Events are kept for aggregate statistics only: metadata and session are
    # stripped on ingest, no session recent-content list, no embedding, no
    # personalized ranking.
    "limited": PrivacyPolicy(store_events=True, keep_metadata=False, keep_session=False, personalize=False),
    # No behavioural events are stored at all (they are reported as suppressed);
    # nothing is personalized.
    "private": PrivacyPolicy(store_events=False, keep_metadata=False, keep_session=False, personalize=False),
}


def policy_for(level: str | None) -> PrivacyPolicy:
    """The policy of a stored level; NULL means the column default, unknown fails closed."""
    if level is None:
        return POLICIES[DEFAULT_PRIVACY_LEVEL]
    return POLICIES.get(level, POLICIES["private"])


# Anonymous events (user_id NULL) carry no user to ask: they are stored with their
# metadata and session (the session is the only handle an anonymous reader has, and
# it drives recent-content exclusion) but nothing is learned per user from them.
ANONYMOUS_POLICY = PrivacyPolicy(store_events=True, keep_metadata=True, keep_session=True, personalize=False)
