-- Stores a notification in its user's history and publishes it, in one atomic step:
-- nothing is delivered live that is not in history, and nothing enters history unpublished.
--
-- KEYS[1]  the user's history stream: history:user_<id>
-- KEYS[2]  optional: a key unique to this notification, publish:once:<random token>. A retry
--          with the same key (after a connection broke before the answer came back) returns
--          the first call's id instead of storing and publishing the notification again.
-- ARGV[1]  the user's channel: user_<id>
-- ARGV[2]  the notification: one JSON object (see docs/PROTOCOL.md)
-- ARGV[3]  entries kept per user (approximate trim, MAXLEN ~)
-- ARGV[4]  age in milliseconds after which entries are trimmed and an idle stream expires;
--          0 keeps entries regardless of age
--
-- Returns { id, receivers }: the entry id (also added to the published object as "id") and
-- PUBLISH's count of gateway nodes that received it (0 for a retry answered from KEYS[2]).
local body = string.match(ARGV[2], '^%s*{(.*)$')
if not body then
  return redis.error_reply('ERR notification must be a JSON object')
end
if KEYS[2] then
  local first = redis.call('GET', KEYS[2])
  if first then
    return { first, 0 }
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'p', ARGV[2])
if KEYS[2] then
  redis.call('SET', KEYS[2], id, 'PX', 600000)
end
local max_age = tonumber(ARGV[4])
if max_age and max_age > 0 then
  local now_ms = tonumber(string.match(id, '^(%d+)'))
  redis.call('XTRIM', KEYS[1], 'MINID', '~', now_ms - max_age)
  redis.call('PEXPIRE', KEYS[1], max_age)
end
local separator = ','
if string.match(body, '^%s*}') then
  separator = ''
end
local receivers = redis.call('PUBLISH', ARGV[1], '{"id":"' .. id .. '"' .. separator .. body)
return { id, receivers }
