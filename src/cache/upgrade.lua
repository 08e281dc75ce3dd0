-- The warming job's write of entries it scanned from MySQL, one page at a
-- time. Per spot:
--   it holds an older version of ours, or a value that is not ours:
--     written (returns 1). Safe: a newer value can only have come back into
--     a spot through a lease, whose holder read MySQL after it was written;
--   it is empty: not written, but leased (returns 2): the page may have
--     been read before a newer write whose entry was evicted since, so the
--     job reads it again and fills it under the lease (fill.lua);
--   a lease is out, the same or a newer version is there, or the user's
--     hash is full: left alone (returns 0).
-- Per spot i (after the common head), four arguments from ARGV[HEAD+4i-3]:
--   its field; its value, a number, 8 * version + code (see
--   codec.rs); its TTL in seconds; the lease to take if it is empty.
local outcome = {}
for i = 1, #KEYS do
  local at = HEAD + 4 * i - 4
  local field, value, ttl, token = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  local held = get(KEYS[i], field)
  outcome[i] = 0
  if not held then
    if room(KEYS[i]) > 0 then
      put_lease(KEYS[i], field, token .. DEADLINE, true)
      outcome[i] = 2
    end
  elseif not is_lease(held) then
    local held_version = version_of(held)
    if held_version == nil or held_version < version_of(value) then
      put(KEYS[i], field, value, ttl, false)
      outcome[i] = 1
    end
  end
end
return outcome
