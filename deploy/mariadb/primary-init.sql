-- Runs once, when the primary's data directory is created (compose.yaml
-- mounts it into /docker-entrypoint-initdb.d). The image has already made the
-- `connstatus` and `replicator` accounts from the environment; the binary log
-- carries these statements to the replica too.

-- The database itself is made by `connstatus migrate`, with the character set
-- the service wants (utf8mb4); the grant on a database that does not exist yet
-- is what lets the service's own account create it.
GRANT ALL PRIVILEGES ON `connstatus`.* TO 'connstatus'@'%';

-- The binary-log follower (`connstatus follow`, and `serve` unless
-- CONNSTATUS_FOLLOW=false) reads the log as a replica does.
GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'connstatus'@'%';
