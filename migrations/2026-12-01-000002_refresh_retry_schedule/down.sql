ALTER TABLE cache_refresh_queue
  DROP KEY cache_refresh_queue_due,
  DROP COLUMN next_attempt_at,
  DROP COLUMN attempts;
