-- Shared by every script (prepended to each): reading and writing copies of
-- entries, "spots": fields of a user's hash, 'u' for the user's presence,
-- the other user's id for a relation (see codec.rs for the layout, write.rs
-- for the rules).
-- A lease is "~<16 hex token><12 hex deadline, Unix ms>", possibly followed
-- by the entry it stands in front of. A hash field cannot expire, so the
-- deadline is compared here.
-- Every script's ARGV starts with: the lease's length in ms, the TTL in
-- seconds a hash gets when a lease creates it, and the most fields a hash
-- keeps.
local LEASE_MS = tonumber(ARGV[1])
local NEW_TTL = ARGV[2]
local CAP = tonumber(ARGV[3])
local HEAD = 3

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local NOW = now_ms()
local DEADLINE = string.format('%012x', NOW + LEASE_MS)

local function is_lease(value)
  return string.sub(value, 1, 1) == '~'
end

local function expired(lease)
  local deadline = tonumber(string.sub(lease, 18, 29), 16)
  return deadline == nil or deadline <= NOW
end

-- The entry behind a lease ('' for none).
local function behind(lease)
  return string.sub(lease, 30)
end

-- An entry is one number, 8 * version + code (codec.rs).
local function is_entry(value)
  return string.match(value, '^%d+$') ~= nil
end

local function version_of(value)
  local n = tonumber(string.match(value, '^(%d+)$'))
  if n == nil then
    return nil
  end
  return math.floor(n / 8)
end

local PRESENCE = 'u'

local function get(key, field)
  return redis.call('HGET', key, field)
end

-- Fields of each hash before this call, and how many this call added.
local lengths, added, aged = {}, {}, {}

-- Room left in a hash for a new field.
local function room(key)
  if not lengths[key] then
    lengths[key] = redis.call('HLEN', key)
    added[key] = 0
  end
  return CAP - lengths[key] - added[key]
end

-- Writes an entry (`new`: the spot is empty now). A new field in a full
-- hash first drops random fields (dropping a copy, even a lease, is always
-- safe: it only makes a miss).
local function put(key, field, value, ttl, new)
  local created = false
  if new then
    if room(key) <= 0 then
      local victims = redis.call('HRANDFIELD', key, 8)
      if #victims > 0 then
        lengths[key] = lengths[key] - redis.call('HDEL', key, unpack(victims))
      end
    end
    created = lengths[key] + added[key] == 0
    added[key] = added[key] + 1
  end
  redis.call('HSET', key, field, value)
  -- The hash's lifetime counts from its creation: no entry in it is older
  -- than the TTL, however busy the hash is. Only a new field can create it.
  if created and not aged[key] then
    redis.call('EXPIRE', key, ttl, 'NX')
    aged[key] = true
  elseif field == PRESENCE and redis.call('HLEN', key) == 1 then
    -- A hash that holds only a presence lives as long as that presence:
    -- an id that never existed gets the short negative TTL, even when a
    -- miss's lease created its hash with the long one.
    redis.call('EXPIRE', key, ttl)
  end
end

local function put_lease(key, field, value, new)
  put(key, field, value, NEW_TTL, new)
end

local function del(key, field)
  redis.call('HDEL', key, field)
end
