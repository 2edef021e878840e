-- A gateway node's presence heartbeat: applies its socket count changes and extends its TTL.
--
-- KEYS[1]  this node's counts: HASH presence:{gw}:node:<node id>, field <user id>, value <sockets>
-- KEYS[2]  the live nodes: ZSET presence:{gw}:nodes
-- ARGV[1]  the node id
-- ARGV[2]  TTL in ms
-- ARGV[3]  "full": replace the counts with the pairs that follow; "delta": add them, but only
--          if the counts still exist when ARGV[4] is "1" (the node believes it has sockets)
-- ARGV[4]  "1" when the node had sockets before these changes
-- ARGV[5..] pairs: user id, count (full) or change (delta)
--
-- Returns 1, or 0 when the node's counts had expired (its heartbeats stopped for longer than
-- the TTL): nothing was applied and the node must send its full counts.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[2])
if ARGV[3] == 'full' then
  redis.call('DEL', KEYS[1])
  for i = 5, #ARGV, 2 do
    if tonumber(ARGV[i + 1]) > 0 then
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    end
  end
else
  if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then
    return 0
  end
  for i = 5, #ARGV, 2 do
    if redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) <= 0 then
      redis.call('HDEL', KEYS[1], ARGV[i])
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
return 1
