-- The shared schema (docs/consistency.md#the-shared-schema). Other systems write these tables
-- too, so the rules every writer follows are enforced here, not in the
-- service: ordered pairs, existing users, requested_by only while pending,
-- rows never deleted, and a version that rises on every change whoever makes it.

CREATE TABLE users (
  id         BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  deleted_at DATETIME(6) NULL,
  -- Added column (the shared schema allows additions): orders the cache's copies
  -- of a user's existence the way user_connections.version orders a pair's.
  version    BIGINT UNSIGNED NOT NULL DEFAULT 1,
  CONSTRAINT users_id_in_range CHECK (id BETWEEN 1 AND 9223372036854775807),
  CONSTRAINT users_version_positive CHECK (version >= 1)
) ENGINE=InnoDB;

CREATE TRIGGER users_version_rises BEFORE UPDATE ON users FOR EACH ROW
  SET NEW.version = OLD.version + 1;

CREATE TABLE user_connections (
  user_low     BIGINT UNSIGNED NOT NULL,
  user_high    BIGINT UNSIGNED NOT NULL,
  state        ENUM('none','pending','connected') NOT NULL DEFAULT 'none',
  requested_by BIGINT UNSIGNED NULL,
  rejected_at  DATETIME(6) NULL,
  version      BIGINT UNSIGNED NOT NULL DEFAULT 1,
  updated_at   DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (user_low, user_high),
  -- "every pair of user X" reads both columns; the primary key serves user_low.
  KEY user_connections_by_high (user_high, user_low),
  CONSTRAINT user_connections_low_exists FOREIGN KEY (user_low) REFERENCES users (id),
  CONSTRAINT user_connections_high_exists FOREIGN KEY (user_high) REFERENCES users (id),
  CONSTRAINT user_connections_ordered CHECK (user_low < user_high),
  -- IS NOT NULL spelled out: a CHECK passes on NULL, and `NULL IN (...)` is NULL.
  CONSTRAINT user_connections_requester CHECK (
    (state = 'pending' AND requested_by IS NOT NULL AND requested_by IN (user_low, user_high))
    OR (state <> 'pending' AND requested_by IS NULL)),
  -- A non-strict session stores '' for an unknown ENUM value; refuse it too.
  CONSTRAINT user_connections_known_state CHECK (state IN ('none', 'pending', 'connected')),
  CONSTRAINT user_connections_rejection CHECK (rejected_at IS NULL OR state = 'pending'),
  -- 0 means "no row" to the cache, so a real row starts above it.
  CONSTRAINT user_connections_version_positive CHECK (version >= 1)
) ENGINE=InnoDB;

CREATE TRIGGER user_connections_version_rises BEFORE UPDATE ON user_connections FOR EACH ROW
  SET NEW.version = OLD.version + 1, NEW.updated_at = CURRENT_TIMESTAMP(6);

CREATE TRIGGER user_connections_never_deleted BEFORE DELETE ON user_connections FOR EACH ROW
  SIGNAL SQLSTATE '45000'
    SET MESSAGE_TEXT = 'user_connections rows are never deleted: set state to none';
