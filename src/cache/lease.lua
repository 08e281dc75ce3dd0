-- Refreshes' leases, one per spot: taken whatever the spot holds (the
-- refresh reads MySQL after this, so it is at least as new as anything
-- there), but an entry the spot holds stays behind the token, so that
-- readers keep their answer while the refresh reads, and get it back if the
-- refresh gives the lease up. Many spots per call: a chunk of the binlog
-- follower's is one call (per slot, in a cluster).
-- Per spot i (after the common head): ARGV[HEAD+2i-1] its field, ARGV[HEAD+2i] the token "~<16 hex>".
-- Returns, per spot, 1.
local taken = {}
for i = 1, #KEYS do
  local field = ARGV[HEAD + 2 * i - 1]
  local value = ARGV[HEAD + 2 * i] .. DEADLINE
  local held = get(KEYS[i], field)
  local new = not held
  if held then
    if is_lease(held) then
      held = behind(held)
    end
    if is_entry(held) then
      value = value .. held
    end
  end
  put_lease(KEYS[i], field, value, new)
  taken[i] = 1
end
return taken
