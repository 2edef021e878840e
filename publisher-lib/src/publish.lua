-- Stores a notification in its user's history and publishes it, in one atomic step:
-- nothing is delivered live that is not in history, and nothing enters history unpublished.
--
-- KEYS[1]  the user's history stream: history:user_<id> (on a Redis Cluster
--          history:{user_<id>}, in the slot of the channel)
-- ARGV[1]  the user's channel: user_<id>
-- ARGV[2]  the notification: one JSON object (see docs/PROTOCOL.md)
-- ARGV[3]  entries kept per user (approximate trim, MAXLEN ~)
-- ARGV[4]  age in milliseconds after which entries are trimmed and an idle stream expires;
--          0 keeps entries regardless of age
-- ARGV[5]  optional: a token unique to this notification, stored with it
-- ARGV[6]  optional: "1" when this call retries an earlier one with the same token (whose
--          answer was lost with its connection). If that one ran, its id is returned and
--          nothing is stored or published again.
-- ARGV[7]  optional: "sharded" on a Redis Cluster: publish with SPUBLISH (sharded pub/sub,
--          Redis 7+), which stays on the shard that serves the user's slot
--
-- Returns { id, receivers }: the entry id (also added to the published object as "id") and
-- PUBLISH's count of gateway nodes that received it (0 for a retry that had already run).
local body = string.match(ARGV[2], '^%s*{(.*)$')
if not body then
  return redis.error_reply('ERR notification must be a JSON object')
end
local token = ARGV[5]
if token == '' then
  token = nil
end
if token and ARGV[6] == '1' then
  -- Retries come within seconds, so the first attempt, if it ran, is among the newest.
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 64)) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'k' and fields[i + 1] == token then
        return { entry[1], 0 }
      end
    end
  end
end
local id
if token then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'p', ARGV[2], 'k', token)
else
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'p', ARGV[2])
end
local max_age = tonumber(ARGV[4])
if max_age and max_age > 0 then
  local now_ms = tonumber(string.match(id, '^(%d+)'))
  redis.call('XTRIM', KEYS[1], 'MINID', '~', math.max(0, now_ms - max_age))
  redis.call('PEXPIRE', KEYS[1], max_age)
end
local separator = ','
if string.match(body, '^%s*}') then
  separator = ''
end
local publish = 'PUBLISH'
if ARGV[7] == 'sharded' then
  publish = 'SPUBLISH'
end
local receivers = redis.call(publish, ARGV[1], '{"id":"' .. id .. '"' .. separator .. body)
return { id, receivers }
