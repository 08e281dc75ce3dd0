-- Landed refreshes are kept for a while (CONNSTATUS_REPLAY_WINDOW_SECONDS)
-- instead of being deleted at once: Redis replication is asynchronous, so a
-- failover or a restart from an older snapshot can lose writes Redis had
-- acknowledged; when the sweeper sees a different Redis server, it re-arms
-- every refresh that landed within the window and replays it.
-- landed_at is NULL while the refresh is pending.
ALTER TABLE cache_refresh_queue
  ADD COLUMN landed_at DATETIME(6) NULL DEFAULT NULL AFTER enqueued_at,
  ADD KEY cache_refresh_queue_by_landing (landed_at);
