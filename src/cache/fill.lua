-- Settles a lease after its holder read MySQL: the fill lands only while the
-- key still holds the holder's own lease (a later lease, a refresh's, took
-- it over; an eviction or a restart removed it), so a fill whose read may be
-- older than the newest write can never land (memcache's leases).
-- A lease is "~<16 hex digits>", possibly followed by the entry it stands in
-- front of (see lease.lua).
-- KEYS[1]  the entry's key
-- ARGV[1]  the lease taken, "~<token>"
-- ARGV[2]  the value, "<version>:<code>"; empty to give the lease back (the
--          entry it stood in front of, if any, is put back)
-- ARGV[3]  the TTL in seconds
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, 17) ~= ARGV[1] then
  return 0
end
local value = ARGV[2]
if value == '' then
  value = string.sub(current, 18)
  if value == '' then
    redis.call('DEL', KEYS[1])
    return 0
  end
end
redis.call('SET', KEYS[1], value, 'EX', ARGV[3])
return 1
