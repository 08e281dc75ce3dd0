-- Settles leases after their holder read MySQL: each fill lands only while
-- its key still holds the holder's own lease (a later lease, a refresh's,
-- took it over; an eviction or a restart removed it), so a fill whose read
-- may be older than the newest write can never land (memcache's leases).
-- A lease is "~<16 hex digits>", possibly followed by the entry it stands in
-- front of (see lease.lua).
-- KEYS[i]        a key
-- ARGV[3i-2]     the lease taken there, "~<token>"
-- ARGV[3i-1]     the value, "<version>:<code>"; empty to give the lease back
--                (the entry it stood in front of, if any, is put back)
-- ARGV[3i]       the TTL in seconds
-- Returns how many keys were written.
local written = 0
for i = 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if current and string.sub(current, 1, 17) == ARGV[3 * i - 2] then
    local value = ARGV[3 * i - 1]
    if value == '' then
      value = string.sub(current, 18)
    end
    if value == '' then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], value, 'EX', ARGV[3 * i])
      written = written + 1
    end
  end
end
return written
