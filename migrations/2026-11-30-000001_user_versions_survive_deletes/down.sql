DROP TRIGGER IF EXISTS users_version_continues;
DROP TRIGGER IF EXISTS users_leave_a_tombstone;
DROP TABLE IF EXISTS user_tombstones;
