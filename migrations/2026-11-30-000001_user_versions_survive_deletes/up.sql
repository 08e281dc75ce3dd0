-- A user's version must never go backwards, whatever writers do to the row:
-- the cache orders its copies of a user by it. Pair rows are never deleted
-- (a trigger refuses it), but user rows may be: a hard delete would take the
-- version with it, and a re-inserted user would start again at 1, below a
-- cached "gone" at a higher version that no refresh could then replace.
-- So a deleted row leaves a tombstone holding the version its deletion
-- stands for (the row's last version + 1), reads of a missing user report
-- that version, and a re-inserted user continues above it.
CREATE TABLE user_tombstones (
  id      BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  version BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB;

CREATE TRIGGER users_leave_a_tombstone AFTER DELETE ON users FOR EACH ROW
  INSERT INTO user_tombstones (id, version) VALUES (OLD.id, OLD.version + 1)
  ON DUPLICATE KEY UPDATE version = GREATEST(version, VALUES(version));

CREATE TRIGGER users_version_continues BEFORE INSERT ON users FOR EACH ROW
  SET NEW.version = GREATEST(NEW.version,
    COALESCE((SELECT t.version + 1 FROM user_tombstones t WHERE t.id = NEW.id), 1));
