-- A reader's leases after a miss, before it reads MySQL: taken where the
-- spot is empty, or holds a lease whose holder is past its deadline.
-- Per spot i (after the common head): ARGV[HEAD+2i-1] its field ('' for a
-- string key), ARGV[HEAD+2i] the token "~<16 hex>".
-- Returns, per spot, 1 when taken, 0 when not.
local taken = {}
for i = 1, #KEYS do
  local field = ARGV[HEAD + 2 * i - 1]
  local current = get(KEYS[i], field)
  taken[i] = 0
  if (not current or (is_lease(current) and expired(current))) and room(KEYS[i], field) then
    put_lease(KEYS[i], field, ARGV[HEAD + 2 * i] .. DEADLINE)
    taken[i] = 1
  end
end
return taken
