#!/usr/bin/env python3
"""Redis CPU cost of presence and scheduled-notification scripts (docs/SCHEDULING.md's tables),
including the three steps of firing on a Redis Cluster (run here on one server: each costs the
same on its own slot).

Starts a private redis-server on a free port, loads 3 nodes x 10,000 users of presence counts,
and prints the best-of-7 `usec_per_call` of each script from INFO commandstats. Needs
redis-server and redis-py (`pip install redis`). Run from the repository root:

    python3 tests/tools/schedule_cost.py
"""

import socket
import subprocess
import time

import redis

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = subprocess.Popen(
    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    stdout=subprocess.DEVNULL,
)
try:
    r = redis.Redis(port=port)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    beat = open('publisher-lib/src/presence_beat.lua').read()
    query = open('publisher-lib/src/presence.lua').read()
    beat_sha = r.script_load(beat); query_sha = r.script_load(query)
    fire = "local function publish(KEYS, ARGV)\n" + open('publisher-lib/src/publish.lua').read() + "end\n" + open('publisher-lib/src/fire.lua').read()
    fire_sha = r.script_load(fire)
    for node, base in [("n1", 1), ("n2", 5001), ("n3", 10001)]:
        pairs = []
        for u in range(base, base + 10000):
            pairs += [u, 1]
        r.evalsha(beat_sha, 2, "presence:{gw}:node:" + node, "presence:{gw}:nodes", node, 6000000, "full", "0", *pairs)
    def cost(fn, calls, cmd="cmdstat_evalsha"):
        best = None
        for rep in range(7):
            r.config_resetstat()
            for i in range(calls):
                fn(i)
            v = r.info("commandstats")[cmd]["usec_per_call"]
            best = v if best is None else min(best, v)
        return best
    for n in (1, 10, 100):
        def f(i, n=n):
            pairs = []
            for u in range(n):
                pairs += [u + 1, 1 if i % 2 == 0 else -1]
            r.evalsha(beat_sha, 2, "presence:{gw}:node:n1", "presence:{gw}:nodes", "n1", 6000000, "delta", "1", *pairs)
        print(f"heartbeat, {n} changed users: {cost(f, 100):.0f} us")
    print(f"heartbeat, no change: {cost(lambda i: r.evalsha(beat_sha, 2, 'presence:{gw}:node:n1', 'presence:{gw}:nodes', 'n1', 6000000, 'delta', '1'), 100):.0f} us")
    for n in (1, 100, 1000):
        users = list(range(1, n + 1))
        for flag in ("0", "1"):
            c = cost(lambda i: r.evalsha(query_sha, 1, "presence:{gw}:nodes", "presence:{gw}:node:", flag, *users), 20)
            print(f"query {n} ids over 3 nodes, nodes={flag}: {c:.0f} us")
    print(f"idle fire poll: {cost(lambda i: r.evalsha(fire_sha, 2, 'schedule:{gw}:due', 'schedule:{gw}:items', 200, 0, 1000, 86400000), 200):.0f} us")
    best = None
    for rep in range(5):
        now = int(time.time() * 1000)
        p = r.pipeline()
        for i in range(200):
            p.zadd("schedule:{gw}:due", {f"k{i}": now - 10}); p.hset("schedule:{gw}:items", f"k{i}", f'{1 + i % 200} {{"type":"info","message":"m{i}","timestamp":{now}}}')
        p.execute()
        r.config_resetstat()
        r.evalsha(fire_sha, 2, "schedule:{gw}:due", "schedule:{gw}:items", 200, 0, 1000, 86400000)
        v = r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
        best = v if best is None else min(best, v)
    print(f"fire 200 due items: {best:.0f} us, {best/200:.1f} us per item")

    # Redis Cluster firing (claim.lua, publish.lua with the claim's token as a retry, the
    # acknowledgement), run on this one server: each step costs the same on its cluster slot.
    claim_sha = r.script_load(open('publisher-lib/src/claim.lua').read())
    publish_sha = r.script_load(open('publisher-lib/src/publish.lua').read())
    claim_keys = ["schedule:{gw}:due", "schedule:{gw}:items", "schedule:{gw}:claims", "schedule:{gw}:leases"]
    print(f"cluster: idle claim poll: {cost(lambda i: r.evalsha(claim_sha, 4, *claim_keys, 200, 0, 5000), 200):.0f} us")
    # Each user's stream already holds 100 entries: the retry scan reads its 64 newest.
    p = r.pipeline(transaction=False)
    for u in range(1, 201):
        for j in range(100):
            p.xadd(f"history:{{user_{u}}}", {"p": '{"type":"info","message":"old"}', "k": f"t{j}"})
    p.execute()
    claim_best = publish_best = ack_best = None
    for rep in range(5):
        now = int(time.time() * 1000)
        p = r.pipeline()
        for i in range(200):
            p.zadd("schedule:{gw}:due", {f"c{rep}:{i}": now - 10}); p.hset("schedule:{gw}:items", f"c{rep}:{i}", f'{1 + i % 200} {{"type":"info","message":"m{i}","timestamp":{now}}}')
        p.execute()
        r.config_resetstat()
        _, _, claimed, _ = r.evalsha(claim_sha, 4, *claim_keys, 200, 0, 5000)
        v = r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
        claim_best = v if claim_best is None else min(claim_best, v)
        r.config_resetstat()
        for token, key, due, user, payload in claimed:
            r.evalsha(publish_sha, 1, f"history:{{user_{user.decode()}}}", f"user_{user.decode()}", payload, 1000, 86400000, token, "1", "sharded")
        v = r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
        publish_best = v if publish_best is None else min(publish_best, v)
        tokens = [c[0] for c in claimed]
        r.config_resetstat()
        p = r.pipeline(transaction=True)
        p.zrem("schedule:{gw}:leases", *tokens); p.hdel("schedule:{gw}:claims", *tokens)
        p.execute()
        stats = r.info("commandstats")
        v = stats["cmdstat_zrem"]["usec"] + stats["cmdstat_hdel"]["usec"]
        ack_best = v if ack_best is None else min(ack_best, v)
    print(f"cluster: claim 200 due items: {claim_best:.0f} us ({claim_best/200:.1f} us per item)")
    print(f"cluster: publish one claimed item (retry scan of 64 entries): {publish_best:.0f} us")
    print(f"cluster: acknowledge 200 items: {ack_best:.0f} us ({ack_best/200:.1f} us per item)")
finally:
    server.kill()
