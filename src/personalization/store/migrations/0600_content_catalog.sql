-- depends: 0003_content
-- The catalogue of a Bible and devotional app (issue 16): one row per content item as
-- before, now with what recommendations need to know about it.
--
-- * passage_id: the canonical passage (OSIS, e.g. 'JHN.3'); every translation of a
--   chapter is its own content_id ('KJV:JHN.3', 'ASV:JHN.3') sharing one passage_id.
--   Signals on any translation count for the passage, and a recommendation list never
--   holds two translations of one passage.  NULL: the item is a passage of its own
--   (devotionals, plan days).
-- * translation: e.g. 'KJV'; matched against user_profile.preferred_translation.
-- * series / position: a book or reading plan and the order within it ("continue reading").
-- * tags: matched against onboarding traits and profile fields (spiritual_goal, denomination).
ALTER TABLE content_items
    ADD COLUMN passage_id TEXT CHECK (passage_id IS NULL OR length(passage_id) BETWEEN 1 AND 256),
    ADD COLUMN translation TEXT CHECK (translation IS NULL OR length(translation) BETWEEN 1 AND 64),
    ADD COLUMN series TEXT CHECK (series IS NULL OR length(series) BETWEEN 1 AND 256),
    ADD COLUMN position INTEGER CHECK (position IS NULL OR position >= 0),
    ADD COLUMN tags TEXT[] NOT NULL DEFAULT '{}';

CREATE INDEX content_items_passage_idx ON content_items (passage_id) WHERE passage_id IS NOT NULL;
CREATE INDEX content_items_series_idx ON content_items (series, position) WHERE series IS NOT NULL;
CREATE INDEX content_items_tags_idx ON content_items USING gin (tags);
