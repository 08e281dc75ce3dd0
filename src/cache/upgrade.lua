-- The warming job's write of entries it scanned from MySQL, one page at a
-- time. Per key:
--   the key holds an older version of ours, or a value that is not ours:
--     written (returns 1). Safe: a newer value can only have come back into
--     a key through a lease, whose holder read MySQL after it was written;
--   the key is empty: not written, but leased (returns 2): the page may have
--     been read before a newer write whose entry was evicted since, so the
--     job reads the key again and fills it under the lease (fill.lua);
--   a lease is out, or the same or a newer version is there: left alone
--     (returns 0).
-- KEYS[i]        an entry's key
-- ARGV[3i-2]     its value, "<version>:<code>" (see codec.rs)
-- ARGV[3i-1]     its TTL in seconds
-- ARGV[3i]       the lease to take if the key is empty, "~<token>"
-- ARGV[#ARGV]    how long a lease lasts, in milliseconds
local lease_ms = ARGV[#ARGV]
local outcome = {}
for i = 1, #KEYS do
  local value = ARGV[3 * i - 2]
  local current = redis.call('GET', KEYS[i])
  outcome[i] = 0
  if not current then
    redis.call('SET', KEYS[i], ARGV[3 * i], 'PX', lease_ms)
    outcome[i] = 2
  elseif string.sub(current, 1, 1) ~= '~' then
    local current_version = tonumber(string.match(current, '^(%d+):'))
    local new_version = tonumber(string.match(value, '^(%d+):'))
    if current_version == nil or current_version < new_version then
      redis.call('SET', KEYS[i], value, 'EX', ARGV[3 * i - 1])
      outcome[i] = 1
    end
  end
end
return outcome
