-- Refresh cache entries, each only if newer: the one write path of refreshes.
-- KEYS[i]        an entry's key
-- ARGV[3i-2]     its value, "<version>:<code>" (see codec.rs)
-- ARGV[3i-1]     its TTL in seconds
-- ARGV[3i]       "1" to write whatever the key holds (only for a user row that
--                no longer exists, whose version can no longer rise), else "0"
-- A key is written when it is absent or holds an older version (or a value
-- that is not ours). An equal version is the same row state: left alone.
-- Atomic, so a slow reader's late fill can never overwrite a newer entry.
local written = 0
for i = 1, #KEYS do
  local value = ARGV[3 * i - 2]
  local new_version = tonumber(string.match(value, '^(%d+):'))
  local write = ARGV[3 * i] == '1'
  if not write and new_version then
    local current = redis.call('GET', KEYS[i])
    local current_version = nil
    if current then
      current_version = tonumber(string.match(current, '^(%d+):'))
    end
    write = current_version == nil or current_version < new_version
  end
  if write then
    redis.call('SET', KEYS[i], value, 'EX', ARGV[3 * i - 1])
    written = written + 1
  end
end
return written
