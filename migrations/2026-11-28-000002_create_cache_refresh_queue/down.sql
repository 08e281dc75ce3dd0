DROP TABLE IF EXISTS cache_refresh_queue;
