-- oxc's schema, version 5: per-user attachment quotas.
--
-- The uploader and the size of each attachment beside its record, so that
-- what a user's attachments hold is one index-only sum (thumbnails are not
-- counted). The upload that checks the quota and inserts the record holds the
-- uploader's row in users (SELECT ... FOR UPDATE), so two concurrent uploads
-- of one user take turns and cannot both pass on the same room.
ALTER TABLE attachments
    ADD COLUMN uploader_id text COLLATE "C",
    ADD COLUMN size bigint NOT NULL DEFAULT 0;
UPDATE attachments SET uploader_id = data->>'uploader_id', size = COALESCE((data->>'size')::bigint, 0);
CREATE INDEX attachments_uploader ON attachments (uploader_id) INCLUDE (size);
