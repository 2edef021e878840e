-- How many sockets each user has open across the fleet.
--
-- KEYS[1]  the live nodes: ZSET member <node id>, score <ms until which the node counts>
-- ARGV[1]  the key prefix of the nodes' counts: presence:{gw}:node:
-- ARGV[2]  "1" to also return the nodes holding each user's sockets, else "0"
-- ARGV[3..] user ids (decimal)
--
-- Returns, in the order of the ids: with ARGV[2] "0", one integer per id (its sockets);
-- with "1", one array per id: { total, node, count, node, count, ... }. Nodes whose
-- heartbeat lapsed are removed first, so a node that died stops counting within its TTL.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local nodes = redis.call('ZRANGE', KEYS[1], 0, -1)
local n = #ARGV - 2
local with_nodes = ARGV[2] == '1'
local totals, per_node = {}, {}
for i = 1, n do
  totals[i] = 0
end
if n > 0 then
  for _, node in ipairs(nodes) do
    local counts = redis.call('HMGET', ARGV[1] .. node, unpack(ARGV, 3))
    for i = 1, n do
      local c = counts[i]
      if c then
        c = tonumber(c)
        totals[i] = totals[i] + c
        if with_nodes then
          local list = per_node[i]
          if not list then
            list = {}
            per_node[i] = list
          end
          list[#list + 1] = node
          list[#list + 1] = c
        end
      end
    end
  end
end
if not with_nodes then
  return totals
end
local replies = {}
for i = 1, n do
  local reply = { totals[i] }
  if with_nodes and per_node[i] then
    for j, v in ipairs(per_node[i]) do
      reply[j + 1] = v
    end
  end
  replies[i] = reply
end
return replies
