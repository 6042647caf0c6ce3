-- depends: 0001_spec_schema
-- Change data capture (issue 7): with the default replica identity a DELETE's WAL record
-- carries only the primary key, so a trait deleted outside the API would reach the cache
-- invalidation consumer without its user_id.  FULL logs the whole old row for UPDATE and
-- DELETE (inserts are unaffected); user_traits is small and rarely changed, so the extra
-- WAL is negligible.  personalization_events keeps the default on purpose: see
-- personalization.stream.cdc for how its updates and deletes appear on the topic.
ALTER TABLE user_traits REPLICA IDENTITY FULL;
