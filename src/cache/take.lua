-- A reader's leases after a miss, before it reads MySQL: taken where the
-- spot is empty, or holds a lease whose holder is past its deadline (in a
-- full hash, random fields make room: what is read now is what is wanted).
-- Per spot i (after the common head): ARGV[HEAD+2i-1] its field, ARGV[HEAD+2i] the token "~<16 hex>".
-- Returns, per spot, 1 when taken, 0 when not.
local taken = {}
for i = 1, #KEYS do
  local field = ARGV[HEAD + 2 * i - 1]
  local lease = ARGV[HEAD + 2 * i] .. DEADLINE
  taken[i] = 1
  if not put_if_empty(KEYS[i], field, lease, NEW_TTL) then
    local held = get(KEYS[i], field)
    if not held or (is_lease(held) and expired(held)) then
      put_lease(KEYS[i], field, lease, not held)
    else
      taken[i] = 0
    end
  end
end
return taken
