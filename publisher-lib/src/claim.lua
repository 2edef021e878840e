-- Firing on a Redis Cluster, step 1 of 3: claim (see docs/SCHEDULING.md, "Firing on a Redis
-- Cluster"). Gateways run this; other publishers never need to.
--
-- On a cluster one script may only touch keys of one slot, and the schedule ({gw}) and a
-- user's history stream ({user_<id>}) live in different slots, so claiming and publishing
-- cannot be one script there. This script moves due items into claims held under a lease;
-- the gateway then publishes each claim with publish.lua on the user's slot under the
-- claim's token, always as a retry (so a second publish of the same claim finds the first
-- one's entry and stores and delivers nothing), and finally acknowledges it (removes the
-- claim). A claim whose lease ran out (its claimer died or stalled) is handed out again.
--
-- KEYS[1]  the due times: ZSET schedule:{gw}:due, member <key>, score <due ms>
-- KEYS[2]  the items: HASH schedule:{gw}:items, field <key>, value "<user id> <notification JSON>"
-- KEYS[3]  the claims: HASH schedule:{gw}:claims, field <token>,
--          value "<due ms> <user id> <key> <notification JSON>"
-- KEYS[4]  the leases: ZSET schedule:{gw}:leases, member <token>, score <lease end, ms>
-- ARGV[1]  most items claimed by this call (expired claims first, then due items)
-- ARGV[2]  lateness limit in ms: an item (or an expired claim) later than this after its due
--          time is dropped instead of claimed; 0 delivers however late
-- ARGV[3]  the lease in ms: how long the claimer has to publish and acknowledge
--
-- The token of an item is "s:" followed by the SHA-1 (hex) of "<key> <due ms> <item value>":
-- the same for every claim of the same item, so its publishes recognise each other.
--
-- Returns { now, next, claimed, dropped }: Redis's clock in ms; the earliest due time or
-- lease end left (-1 when there is none); for each claimed item
-- { token, key, due ms, user id (a string), notification JSON }; for each dropped item { key, lateness }.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local batch = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local claimed, dropped = {}, {}

-- Claims whose lease ran out: their claimer died or stalled before acknowledging them.
for _, token in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, batch)) do
  local record = redis.call('HGET', KEYS[3], token)
  local due, user, key, payload
  if record then
    due, user, key, payload = string.match(record, '^(%d+) (%d+) (%S+) (.*)$')
  end
  if not due then
    redis.call('ZREM', KEYS[4], token)
    redis.call('HDEL', KEYS[3], token)
  elseif limit > 0 and now - tonumber(due) > limit then
    redis.call('ZREM', KEYS[4], token)
    redis.call('HDEL', KEYS[3], token)
    dropped[#dropped + 1] = { key, now - tonumber(due) }
  else
    redis.call('ZADD', KEYS[4], now + lease, token)
    claimed[#claimed + 1] = { token, key, tonumber(due), user, payload }
  end
end

-- Due items: each leaves the schedule as it becomes a claim.
local room = batch - #claimed
if room > 0 then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, room)
  for i = 1, #due, 2 do
    local key = due[i]
    local at = tonumber(due[i + 1])
    local lateness = now - at
    local item = redis.call('HGET', KEYS[2], key)
    redis.call('ZREM', KEYS[1], key)
    redis.call('HDEL', KEYS[2], key)
    local user, payload
    if item and not string.find(key, '%s') then
      user, payload = string.match(item, '^(%d+) (.*)$')
    end
    if not user or (limit > 0 and lateness > limit) then
      dropped[#dropped + 1] = { key, lateness }
    else
      local token = 's:' .. redis.sha1hex(key .. ' ' .. string.format('%d', at) .. ' ' .. item)
      redis.call('HSET', KEYS[3], token, string.format('%d', at) .. ' ' .. user .. ' ' .. key .. ' ' .. payload)
      redis.call('ZADD', KEYS[4], now + lease, token)
      claimed[#claimed + 1] = { token, key, at, user, payload }
    end
  end
end

local next_due = -1
for _, k in ipairs({ KEYS[1], KEYS[4] }) do
  local head = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
  if head[2] and (next_due < 0 or tonumber(head[2]) < next_due) then
    next_due = tonumber(head[2])
  end
end
return { now, next_due, claimed, dropped }
