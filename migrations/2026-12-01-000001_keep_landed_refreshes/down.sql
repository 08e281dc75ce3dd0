-- Without the column every row reads as pending: drop the landed ones first.
DELETE FROM cache_refresh_queue WHERE landed_at IS NOT NULL;
ALTER TABLE cache_refresh_queue
  DROP KEY cache_refresh_queue_by_landing,
  DROP COLUMN landed_at;
