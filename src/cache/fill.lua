-- A reader's fill after a miss: lands only while the key still holds the
-- reader's own lease. A refresh replaces the lease, and an eviction or a
-- restart removes it, so a fill whose MySQL read may be older than the newest
-- write can never land (memcache's leases, in one script).
-- KEYS[1]  the entry's key
-- ARGV[1]  the lease the reader took, "~<token>"
-- ARGV[2]  the value, "<version>:<code>"; empty to give the lease back
-- ARGV[3]  its TTL in seconds
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
