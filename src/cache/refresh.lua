-- Refresh cache entries, each only if newer: the one write path of refreshes.
-- KEYS[i]        an entry's key
-- ARGV[2i-1]     its value, "<version>:<code>" (see codec.rs)
-- ARGV[2i]       its TTL in seconds
-- A key is written when it is absent or holds an older version, a reader's
-- lease ("~<token>", which this write thereby takes away), or a value that is
-- not ours. An equal version is the same row state: left alone. Atomic, so
-- nothing can land between the comparison and the write.
local written = 0
for i = 1, #KEYS do
  local value = ARGV[2 * i - 1]
  local new_version = tonumber(string.match(value, '^(%d+):'))
  local current = redis.call('GET', KEYS[i])
  local current_version = nil
  if current then
    current_version = tonumber(string.match(current, '^(%d+):'))
  end
  if current_version == nil or current_version < new_version then
    redis.call('SET', KEYS[i], value, 'EX', ARGV[2 * i])
    written = written + 1
  end
end
return written
