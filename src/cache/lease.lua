-- A refresh's lease: taken whatever the key holds (the refresh reads MySQL
-- after this, so it is at least as new as anything there), but an entry the
-- key holds stays behind the token, so that readers keep their answer while
-- the refresh reads, and get it back if the refresh gives the lease up.
-- KEYS[1]  the key
-- ARGV[1]  the lease, "~<token>" (17 bytes)
-- ARGV[2]  how long it lasts, in milliseconds
local current = redis.call('GET', KEYS[1])
local value = ARGV[1]
if current then
  if string.sub(current, 1, 1) == '~' then
    current = string.sub(current, 18)
  end
  if string.match(current, '^%d+:[nclhLHag]$') then
    value = value .. current
  end
end
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return 1
