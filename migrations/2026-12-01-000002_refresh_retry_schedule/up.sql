-- Every pending refresh has a retry schedule. A sweep takes the rows that
-- are due, oldest due first; a row that Redis took but that did not settle
-- (its queued version is not reached) is tried again later, each time
-- twice as late up to a cap, so rows that never settle cannot hold back the
-- ones behind them. A Redis or MySQL outage does not count as an attempt.
ALTER TABLE cache_refresh_queue
  ADD COLUMN attempts INT UNSIGNED NOT NULL DEFAULT 0 AFTER landed_at,
  ADD COLUMN next_attempt_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) AFTER attempts,
  ADD KEY cache_refresh_queue_due (landed_at, next_attempt_at);
UPDATE cache_refresh_queue SET next_attempt_at = enqueued_at;
