"""The one Debezium reader (kafka.envelope) on both message shapes of the three tables."""

from __future__ import annotations

import uuid

import pytest

from envelope_shapes import SHAPES, Shape, change, event_row, key, profile_row, trait_row
from personalization.kafka import names
from personalization.kafka.envelope import (
    EventRecord,
    Ignored,
    MalformedMessage,
    ProfileChange,
    RowChange,
    UserErased,
    parse_event_message,
    parse_profile_message,
    parse_row_change,
    read_insert_fast,
)


@pytest.mark.parametrize("shape", SHAPES)
def test_event_insert(shape: Shape) -> None:
    user = uuid.uuid4()
    value = change("personalization_events", "c", after=event_row(user), lsn=5000, shape=shape)
    record = parse_event_message(key(user, shape=shape, table="personalization_events"), value)
    assert isinstance(record, EventRecord)
    assert (record.user_id, record.content_id, record.signal_type) == (user, "JHN.3", "read")
    assert record.signal_weight == 0.75
    assert record.position == (4992, 5000, 7) and record.tx_id == 771
    fast = read_insert_fast(value)
    # The fast path answers for the plain shape only, and then exactly like the full reader.
    if shape == "plain":
        assert fast is not None and fast[0] == user and fast[6] == record.position
    else:
        assert fast is None


@pytest.mark.parametrize("shape", SHAPES)
def test_event_tombstone_names_the_erased_user(shape: Shape) -> None:
    user = uuid.uuid4()
    assert parse_event_message(key(user, shape=shape), None) == UserErased(user)
    assert parse_event_message(key(None, shape=shape), None) == Ignored("tombstone")


@pytest.mark.parametrize("shape", SHAPES)
def test_profile_changes(shape: Shape) -> None:
    user = uuid.uuid4()
    update = change("user_profile", "u", after=profile_row(user, "limited"), shape=shape)
    assert parse_profile_message(key(user, shape=shape), update) == ProfileChange(user, False, "limited")
    delete = change("user_profile", "d", before={"user_id": str(user)}, shape=shape)
    assert parse_profile_message(key(user, shape=shape), delete) == ProfileChange(user, True, None)
    assert parse_row_change(update, names.INVALIDATION_TABLES) == RowChange("u", "user_profile", frozenset({user}))


@pytest.mark.parametrize("shape", SHAPES)
def test_trait_changes_name_both_images(shape: Shape) -> None:
    old, new = uuid.uuid4(), uuid.uuid4()
    insert = change("user_traits", "c", after=trait_row(new), shape=shape)
    assert parse_row_change(insert, names.INVALIDATION_TABLES) == RowChange("c", "user_traits", frozenset({new}))
    moved = change("user_traits", "u", before=trait_row(old), after=trait_row(new), shape=shape)
    assert parse_row_change(moved, names.INVALIDATION_TABLES).users == {old, new}  # type: ignore[union-attr]
    truncate = change("user_traits", "t", shape=shape)
    assert parse_row_change(truncate, names.INVALIDATION_TABLES) == RowChange("t", "user_traits", frozenset())
    assert parse_row_change(None, names.INVALIDATION_TABLES) == Ignored("tombstone")


@pytest.mark.parametrize("shape", SHAPES)
def test_wrong_table_and_bad_ids_are_malformed(shape: Shape) -> None:
    user = uuid.uuid4()
    with pytest.raises(MalformedMessage, match="table 'personalization_events'"):
        parse_row_change(change("personalization_events", "c", after=event_row(user), shape=shape),
                         names.INVALIDATION_TABLES)
    with pytest.raises(MalformedMessage, match=r"after\.user_id is not a UUID"):
        parse_row_change(change("user_traits", "c", after=trait_row(user) | {"user_id": "x"}, shape=shape),
                         names.INVALIDATION_TABLES)
    with pytest.raises(MalformedMessage, match="unknown Debezium op"):
        parse_row_change(change("user_traits", "z", shape=shape), names.INVALIDATION_TABLES)
    with pytest.raises(MalformedMessage, match="not JSON"):
        parse_row_change(b"{", names.INVALIDATION_TABLES)
