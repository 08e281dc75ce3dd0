DROP TABLE binlog_follower_position;
