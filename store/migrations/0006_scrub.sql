-- oxc's schema, version 7: deleting a message scrubs every copy of its text.
--
-- ``scrub_message`` finds what refers to a deleted message without reading
-- whole tables: events by their data's ``id`` (the message's own events) or
-- ``message_id`` (notifications and receipts about it), notifications by
-- their ``message_id``, and push jobs (queued or dead letters) by the ids of
-- the messages their deliveries are about, kept beside each job.
CREATE INDEX events_about ON events ((data->>'id'));
CREATE INDEX events_about_message ON events ((data->>'message_id')) WHERE data->>'message_id' IS NOT NULL;
CREATE INDEX notifications_message ON notifications ((data->>'message_id')) WHERE data->>'message_id' IS NOT NULL;
ALTER TABLE push_jobs ADD COLUMN message_ids text[] COLLATE "C" NOT NULL DEFAULT '{}';
UPDATE push_jobs SET message_ids = ARRAY(
    SELECT DISTINCT delivery->'notification'->>'message_id'
    FROM json_array_elements(data->'payload'->'deliveries') AS delivery
    WHERE delivery->'notification'->>'message_id' IS NOT NULL);
CREATE INDEX push_jobs_messages ON push_jobs USING gin (message_ids);
