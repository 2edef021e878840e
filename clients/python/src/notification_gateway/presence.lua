-- How many sockets each user has open across the fleet.
--
-- KEYS[1]  the live nodes: ZSET member <node id>, score <ms until which the node counts>
-- ARGV[1]  the key prefix of the nodes' counts: presence:{gw}:node:
-- ARGV[2]  "1" to also return the nodes holding each user's sockets
-- ARGV[3..] user ids (decimal)
--
-- Returns one reply per user id, in order: { total } or, with ARGV[2] "1",
-- { total, node, count, node, count, ... }. Nodes whose heartbeat lapsed are removed first,
-- so a node that died stops counting within its TTL.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local nodes = redis.call('ZRANGE', KEYS[1], 0, -1)
local users = {}
for i = 3, #ARGV do
  users[#users + 1] = ARGV[i]
end
local replies = {}
for i = 1, #users do
  replies[i] = { 0 }
end
if #users > 0 then
  for _, node in ipairs(nodes) do
    local counts = redis.call('HMGET', ARGV[1] .. node, unpack(users))
    for i = 1, #users do
      local n = tonumber(counts[i])
      if n and n > 0 then
        replies[i][1] = replies[i][1] + n
        if ARGV[2] == '1' then
          replies[i][#replies[i] + 1] = node
          replies[i][#replies[i] + 1] = n
        end
      end
    end
  end
end
return replies
