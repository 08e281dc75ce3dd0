-- Settles leases after their holder read MySQL: each fill lands only while
-- its spot still holds the holder's own lease (a later lease, a refresh's,
-- took it over; an eviction or a restart removed it), so a fill whose read
-- may be older than the newest write can never land (memcache's leases);
-- it may only become what readers answer while a later lease is out.
-- Per spot i (after the common head), four arguments from ARGV[HEAD+4i-3]:
--   its field; the lease taken there, "~<16 hex>";
--   the value, a number, 8 * version + code, empty to give the lease back (the entry
--   it stood in front of, if any, is put back); the TTL in seconds.
-- Returns, per spot, 1 when written, 0 when not.
local written = {}
for i = 1, #KEYS do
  local at = HEAD + 4 * i - 4
  local field, token, value, ttl = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  local held = get(KEYS[i], field)
  written[i] = 0
  if held and string.sub(held, 1, 17) == token then
    if value == '' then
      value = behind(held)
    end
    if value == '' then
      del(KEYS[i], field)
    else
      put(KEYS[i], field, value, ttl, false)
      written[i] = 1
    end
  elseif held and value ~= '' and is_lease(held) then
    -- A later lease took this one over (a refresh: the binlog follower's,
    -- another instance's): its holder will fill. Meanwhile readers answer
    -- the entry behind it; when this read is newer, it goes there, so that
    -- a mutation whose fill was taken over is still read back at once. Not
    -- counted as written: the lease's holder fills.
    local before = version_of(behind(held))
    if before == nil or before < version_of(value) then
      put(KEYS[i], field, string.sub(held, 1, 29) .. value, ttl, false)
    end
  end
end
return written
