-- Where the binary-log follower has applied the log up to: one row, written
-- only after the refreshes of the transactions before it have landed, so a
-- follower that restarts (or another instance that takes over) resumes
-- there and misses nothing (docs/consistency.md#the-binary-log).
-- `file`/`pos` name a place between two transactions in the log of the
-- server the follower reads; `server_id` is that server's @@server_id, so a
-- position read from another server's log is not mistaken for this one's.
CREATE TABLE binlog_follower_position (
  id         TINYINT UNSIGNED NOT NULL PRIMARY KEY,
  server_id  INT UNSIGNED NOT NULL,
  file       VARCHAR(512) NOT NULL,
  pos        BIGINT UNSIGNED NOT NULL,
  updated_at DATETIME(6) NOT NULL
) ENGINE=InnoDB;
