DROP TRIGGER IF EXISTS user_connections_never_deleted;
DROP TRIGGER IF EXISTS user_connections_version_rises;
DROP TABLE IF EXISTS user_connections;
DROP TRIGGER IF EXISTS users_version_rises;
DROP TABLE IF EXISTS users;
