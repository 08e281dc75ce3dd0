-- Runs once, when the replica's data directory is created. The image has
-- already pointed it at the primary (MARIADB_MASTER_HOST and the replication
-- account: CHANGE MASTER TO ...); replicating by GTID lets it resume from its
-- own position after a restart, and be re-pointed at a promoted server, without
-- anyone reading binary-log file names and offsets. It starts replicating when
-- the real server starts (the image's set-up server runs with
-- --skip-slave-start), from the beginning of the primary's binary log, which
-- holds everything the primary was given, accounts included.
CHANGE MASTER TO MASTER_USE_GTID = slave_pos;
