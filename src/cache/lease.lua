-- Refreshes' leases, one per key: taken whatever the key holds (the refresh
-- reads MySQL after this, so it is at least as new as anything there), but
-- an entry the key holds stays behind the token, so that readers keep their
-- answer while the refresh reads, and get it back if the refresh gives the
-- lease up. Many keys per call: a chunk of the binlog follower's is one call.
-- KEYS[i]      a key
-- ARGV[1]      how long the leases last, in milliseconds
-- ARGV[i + 1]  the lease for KEYS[i], "~<token>" (17 bytes)
-- Returns how many leases were taken (all of them).
for i = 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  local value = ARGV[i + 1]
  if current then
    if string.sub(current, 1, 1) == '~' then
      current = string.sub(current, 18)
    end
    if string.match(current, '^%d+:[nclhLHag]$') then
      value = value .. current
    end
  end
  redis.call('SET', KEYS[i], value, 'PX', ARGV[1])
end
return #KEYS
