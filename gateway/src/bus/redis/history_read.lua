-- Reads a user's history for a resume: the stream's state and the newest entries after an id.
--
-- KEYS[1]  the user's history stream: history:user_<id>
-- ARGV[1]  exclusive start: "(<id>"
-- ARGV[2]  most entries returned
--
-- Returns nil when the user has no history, else
-- { last-generated-id, entries-added, length, first-entry-id or "", now-ms, entries newest first }.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, added, length, first = '0-0', 0, 0, ''
for i = 1, #info, 2 do
  local key, value = info[i], info[i + 1]
  if key == 'last-generated-id' then
    last = value
  elseif key == 'entries-added' then
    added = value
  elseif key == 'length' then
    length = value
  elseif key == 'first-entry' and value then
    first = value[1]
  end
end
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local entries = redis.call('XREVRANGE', KEYS[1], '+', ARGV[1], 'COUNT', ARGV[2])
return { last, added, length, first, tostring(now_ms), entries }
