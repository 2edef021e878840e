#!/usr/bin/env python3
"""Splits scenario b's publish-to-delivery latency by hop, frame by frame.

Reads a loopback capture taken during the run and the per-frame trace of gw-bench's workers,
matches every notification by its send time `t` (unique, carried in the frame), and prints
each hop's percentiles and its share of the slowest 1 % of frames, for the gateway path and
for the echo floor. Standard library only. See docs/PERFORMANCE.md, "Latency, scenario b".

    d=/tmp/b-split; mkdir -p $d
    tcpdump -i lo -s 2048 --time-stamp-precision nano -B 32768 -w $d/lo.pcap \\
      'tcp and (((ip[2:2] - ((ip[0]&0xf)<<2)) - ((tcp[12]&0xf0)>>2)) != 0)' &
    ./target/release/gw-bench --scenario b --trace-frames $d > $d/run.json
    kill %1; python3 tests/bench-latency-split.py $d/lo.pcap $d

Hops, each timed when its packet is sent on lo (the capture point; delivery to the receiving
socket follows at once):
  gateway path: stamp (t, in the conductor) -> EVALSHA sent to Redis -> Redis sends the pub/sub
  message to the gateway -> the gateway sends the WebSocket frame -> the worker has parsed it;
  and, inside the first hop, the connection pool's check (UNWATCH + PING) before EVALSHA.
  echo floor: stamp (in the worker) -> client frame sent -> echo frame sent -> parsed.
"""
import collections
import glob
import re
import struct
import sys

T = re.compile(rb'"t":(\d{16,20})')


def packets(path):
    """(ns, sport, dport, tcp payload) of every packet of a pcap (Ethernet or cooked)."""
    with open(path, 'rb') as f:
        head = f.read(24)
        nano = struct.unpack('<I', head[:4])[0] == 0xa1b23c4d
        link = struct.unpack('<I', head[20:24])[0]
        while True:
            h = f.read(16)
            if len(h) < 16:
                return
            sec, frac, incl, _ = struct.unpack('<IIII', h)
            data = f.read(incl)
            ip = data[14 if link == 1 else 16:]
            tcp = ip[(ip[0] & 15) * 4:]
            sport, dport = struct.unpack('>HH', tcp[:4])
            yield (sec * 1_000_000_000 + (frac if nano else frac * 1000), sport, dport,
                   tcp[(tcp[12] >> 4) * 4:])


def unmask(p):
    """The payloads of the (masked) client WebSocket frames in one segment."""
    out, i = [], 0
    while i + 2 <= len(p):
        b1 = p[i + 1]
        n, j = b1 & 127, i + 2
        if n == 126:
            n, j = struct.unpack('>H', p[j:j + 2])[0], j + 2
        elif n == 127:
            n, j = struct.unpack('>Q', p[j:j + 8])[0], j + 8
        if b1 & 128:
            key, j = p[j:j + 4], j + 4
            out.append(bytes(c ^ key[k % 4] for k, c in enumerate(p[j:j + n])))
        else:
            out.append(p[j:j + n])
        i = j + n
    return out


def is_evalsha(pl):
    return pl[:1] == b'*' and b'evalsha' in pl[:64].lower()


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float('nan')


def main(pcap, tdir):
    ev = collections.defaultdict(dict)
    check = {}   # connection -> [UNWATCH sent, its reply]
    pool = {}   # t -> the three parts of its first hop
    for ts, sp, dp, pl in packets(pcap):
        if len(pl) < 2:
            continue
        if pl.startswith(b'*1\r\n$7\r\nUNWATCH'):
            check[(sp, dp)] = [ts, None]
            continue
        if pl.startswith(b'+OK\r\n$') and check.get((dp, sp), [0, 0])[1] is None:
            check[(dp, sp)][1] = ts
            continue
        if is_evalsha(pl):
            hop, bodies = 'redis_in', [pl]
            u, r = check.pop((sp, dp), (None, None))
            for m in T.findall(pl):
                if r and u >= int(m):
                    pool[int(m)] = ((u - int(m)) / 1e3, (r - u) / 1e3, (ts - r) / 1e3)
        elif pl[4:15] == b'$7\r\nmessage' or pl[4:16] == b'$8\r\nsmessage':
            hop, bodies = 'redis_out', [pl]
        elif pl[0] == 0x81 and not pl[1] & 128:
            hop, bodies = 'server_out', [pl]
        elif pl[0] == 0x81:
            hop, bodies = 'client_out', unmask(pl)
        else:
            continue
        for body in bodies:
            for m in T.findall(body):
                ev[int(m)].setdefault(hop, ts)

    def received(prefix):
        rx = {}
        for path in glob.glob(f'{tdir}/{prefix}-w*.tsv'):
            for line in open(path):
                _, _, t, r = map(int, line.split())
                rx[t] = r
        return rx

    def table(rows, labels):
        print('%-34s %8s %8s %8s %8s' % ('hop (µs)', 'p50', 'p90', 'p99', 'max'))
        for i, label in enumerate(labels):
            col = [r[i] for r in rows]
            print('%-34s %8.0f %8.0f %8.0f %8.0f' % (label, pct(col, .5), pct(col, .9),
                                                      pct(col, .99), max(col)))

    def report(name, prefix, hops, names):
        rx = received(prefix)
        rows = []
        for t, r in rx.items():
            e = ev.get(t, {})
            if all(h in e for h in hops):
                pts = [t] + [e[h] for h in hops] + [r]
                rows.append([(b - a) / 1e3 for a, b in zip(pts, pts[1:])] + [(r - t) / 1e3])
        print(f'== {name}: {len(rows)} of {len(rx)} frames matched')
        if not rows:
            return
        table(rows, names + ['total'])
        rows.sort(key=lambda r: r[-1])
        tail = rows[int(len(rows) * 0.99):]
        total = sum(r[-1] for r in tail)
        print(f'-- the slowest 1 % ({len(tail)} frames, >= {tail[0][-1]:.0f} µs): '
              'mean of each hop and its share')
        for i, label in enumerate(names):
            s = sum(r[i] for r in tail)
            print('%-34s %8.0f µs  %5.1f %%' % (label, s / len(tail), 100 * s / total))

    report('gateway path', 'gateway', ['redis_in', 'redis_out', 'server_out'],
           ['conductor: stamp -> EVALSHA sent', 'Redis: script -> message sent',
            'gateway: message -> frame sent', 'worker: frame -> parsed'])
    # Only this run's notifications: other programs on the machine may use lo too.
    ours = [pool[t] for t in received('gateway') if t in pool]
    if ours:
        print(f'-- inside the first hop ({len(ours)} calls)')
        table(ours, ['stamp -> pool check sent', 'pool check round trip',
                     'reply -> EVALSHA sent'])
    report('echo floor', 'echo', ['client_out', 'server_out'],
           ['worker: stamp -> frame sent', 'echo server: frame -> echo sent',
            'worker: echo -> parsed'])


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
