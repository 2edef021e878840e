-- (Appended to publish.lua wrapped as `local function publish(KEYS, ARGV) ... end`: see
-- publisher-lib/src/schedule.rs. Gateways run this; other publishers never need to.)
--
-- Claims the scheduled notifications that are due and publishes each through the same
-- history-and-publish code as any notification, in one atomic step: an item is removed from
-- the schedule exactly when it is published (or dropped as too late), so however many gateway
-- nodes run this at once, and whenever one dies, every item fires once.
--
-- KEYS[1]  the due times: ZSET member <key>, score <due ms since the Unix epoch>
-- KEYS[2]  the items: HASH field <key>, value "<user id> <notification JSON>"
-- ARGV[1]  most items fired by this call
-- ARGV[2]  lateness limit in ms: an item claimed later than this after its due time is
--          dropped instead of delivered; 0 delivers however late
-- ARGV[3]  history entries kept per user (publish.lua's ARGV[3])
-- ARGV[4]  history age limit in ms (publish.lua's ARGV[4])
--
-- Returns { now, next, fired, dropped }: Redis's clock in ms, the next due time (-1 when the
-- schedule is empty), and for each fired and each dropped item { key, lateness ms }.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local limit = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local fired, dropped = {}, {}
for i = 1, #due, 2 do
  local key = due[i]
  local lateness = now - tonumber(due[i + 1])
  local item = redis.call('HGET', KEYS[2], key)
  redis.call('ZREM', KEYS[1], key)
  redis.call('HDEL', KEYS[2], key)
  local user, payload
  if item then
    user, payload = string.match(item, '^(%d+) (.*)$')
  end
  if not user or (limit > 0 and lateness > limit) then
    dropped[#dropped + 1] = { key, lateness }
  else
    local reply = publish({ 'history:user_' .. user }, { 'user_' .. user, payload, ARGV[3], ARGV[4] })
    if type(reply) == 'table' and reply.err then
      dropped[#dropped + 1] = { key, lateness }
    else
      fired[#fired + 1] = { key, lateness }
    end
  end
end
local next_due = -1
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then
  next_due = tonumber(head[2])
end
return { now, next_due, fired, dropped }
