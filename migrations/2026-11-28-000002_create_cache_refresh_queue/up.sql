-- The durable list of cache refreshes that have not landed yet (the
-- transactional outbox). A mutation writes its row in the same transaction
-- as the change; the refresh that follows the commit deletes it once Redis
-- holds that version. If Redis was unreachable, or the instance died between
-- commit and refresh, the row stays, and every instance's sweeper retries it.
-- connstatus's own table: other writers never need to touch it.
CREATE TABLE cache_refresh_queue (
  kind        TINYINT UNSIGNED NOT NULL,   -- 1: pair (a = user_low, b = user_high); 2: user (a = id, b = 0)
  a           BIGINT UNSIGNED NOT NULL,
  b           BIGINT UNSIGNED NOT NULL DEFAULT 0,
  version     BIGINT UNSIGNED NOT NULL,    -- the row version the cache must reach
  enqueued_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (kind, a, b),
  KEY cache_refresh_queue_by_age (enqueued_at),
  CONSTRAINT cache_refresh_queue_kind CHECK (kind IN (1, 2))
) ENGINE=InnoDB;
