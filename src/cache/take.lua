-- A reader's leases after a miss, before it reads MySQL: taken where the
-- spot is empty, or holds a lease whose holder is past its deadline (in a
-- full hash, random fields make room: what is read now is what is wanted).
-- Per spot i (after the common head): ARGV[HEAD+2i-1] its field, ARGV[HEAD+2i] the token "~<16 hex>".
-- Returns, per spot, 1 when taken, 0 when not.
local taken = {}
for i = 1, #KEYS do
  local field = ARGV[HEAD + 2 * i - 1]
  local held = get(KEYS[i], field)
  taken[i] = 0
  if not held or (is_lease(held) and expired(held)) then
    put_lease(KEYS[i], field, ARGV[HEAD + 2 * i] .. DEADLINE, not held)
    taken[i] = 1
  end
end
return taken
