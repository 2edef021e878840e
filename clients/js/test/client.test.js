// Unit tests of the reconnect rules, with a fake clock, fake WebSocket, fake fetch and fake
// window: no real waits, no network. Run: node --test clients/js/test/
import { test } from "node:test";
import assert from "node:assert/strict";

import { backoffDelay, createNotificationClient, isAfter } from "../src/index.js";

/** A clock whose timers run only when the test advances it. */
class Clock {
  now = 0;
  timers = [];
  setTimeout = (f, ms) => {
    const timer = { at: this.now + ms, f };
    this.timers.push(timer);
    return timer;
  };
  clearTimeout = (timer) => {
    this.timers = this.timers.filter((t) => t !== timer);
  };
  /** The delay of the one pending timer. */
  pending() {
    assert.equal(this.timers.length, 1, "exactly one timer pending");
    return this.timers[0].at - this.now;
  }
  async advance(ms) {
    const until = this.now + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at);
      const next = this.timers[0];
      if (!next || next.at > until) break;
      this.timers.shift();
      this.now = next.at;
      next.f();
      await settle();
    }
    this.now = until;
    await settle();
  }
}

/** Lets promise callbacks (token provider, probe) run. */
async function settle() {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

function fakeSockets() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.closedWith = null;
      sockets.push(this);
    }
    close(code) {
      this.closedWith = code;
    }
    // Test side
    accept() {
      this.onopen?.({});
    }
    send(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }
    drop(code = 1006) {
      this.onclose?.({ code, reason: "" });
    }
  }
  return { sockets, FakeWebSocket, last: () => sockets[sockets.length - 1] };
}

class FakeWindow {
  listeners = {};
  navigator = { onLine: true };
  document = {
    visibilityState: "visible",
    listeners: {},
    addEventListener: (t, f) => ((this.document.listeners[t] ??= new Set()).add(f)),
    removeEventListener: (t, f) => this.document.listeners[t]?.delete(f),
  };
  addEventListener(t, f) {
    (this.listeners[t] ??= new Set()).add(f);
  }
  removeEventListener(t, f) {
    this.listeners[t]?.delete(f);
  }
  emit(t) {
    for (const f of this.listeners[t] ?? []) f({});
  }
  setVisible(visible) {
    this.document.visibilityState = visible ? "visible" : "hidden";
    for (const f of this.document.listeners.visibilitychange ?? []) f({});
  }
}

class MemoryStorage {
  map = new Map();
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}

/** A client wired to fakes; `refusal` is what the probe's GET answers. */
function setup(overrides = {}) {
  const clock = new Clock();
  const ws = fakeSockets();
  const win = new FakeWindow();
  const storage = overrides.storage ?? new MemoryStorage();
  const events = { notifications: [], missed: [], states: [], tokens: [], probes: [] };
  let tokenCounter = 0;
  const probeAnswers = [];
  const client = createNotificationClient({
    url: "https://gw.example",
    userId: 42,
    WebSocket: ws.FakeWebSocket,
    env: win,
    storage,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: () => clock.now,
    random: overrides.random ?? (() => 0.5),
    backoff: { baseMs: 1000, maxMs: 8000 },
    getToken: async ({ reason }) => {
      events.tokens.push(reason);
      return `token-${++tokenCounter}`;
    },
    fetch: async (url, init) => {
      events.probes.push({ url, auth: init.headers.Authorization });
      const answer = probeAnswers.shift() ?? { status: 400, body: { error: "not_websocket" } };
      if (answer.throws) throw new TypeError("Failed to fetch");
      return {
        ok: answer.status >= 200 && answer.status < 300,
        status: answer.status,
        json: async () => answer.body,
      };
    },
    onNotification: (n) => events.notifications.push(n.id ?? n.message),
    onMissed: (m) => events.missed.push(m),
    onStateChange: (s, info) => events.states.push({ s, ...info }),
    ...overrides.options,
  });
  return { client, clock, ws, win, storage, events, probeAnswers };
}

const note = (id, message = `n${id}`) => ({ id, type: "info", message });

test("ids compare as <ms>-<seq> numbers, not as strings", () => {
  assert.ok(isAfter("10-0", "9-5"));
  assert.ok(isAfter("1700000000000-10", "1700000000000-9"));
  assert.ok(!isAfter("1700000000000-9", "1700000000000-9"));
  assert.ok(!isAfter("9-9", "10-0"));
  assert.ok(isAfter("1-0", null));
  assert.ok(!isAfter("garbage", "1-0"));
});

test("backoff is full jitter below an exponential ceiling, capped", () => {
  const opts = { baseMs: 1000, maxMs: 8000 };
  assert.equal(backoffDelay(0, opts, () => 0.999999), 999);
  assert.equal(backoffDelay(1, opts, () => 0.999999), 1999);
  assert.equal(backoffDelay(3, opts, () => 0.999999), 7999);
  assert.equal(backoffDelay(4, opts, () => 0.999999), 7999, "capped");
  assert.equal(backoffDelay(60, opts, () => 0.999999), 7999, "no overflow");
  assert.equal(backoffDelay(5, opts, () => 0), 0, "full jitter reaches zero");
});

test("connects with the token as the bearer subprotocol, never in the URL", async () => {
  const { client, ws, events } = setup();
  client.start();
  await settle();
  assert.equal(ws.sockets.length, 1);
  assert.equal(ws.last().url, "wss://gw.example/ws/notifications/42/");
  assert.deepEqual(ws.last().protocols, ["bearer", "token-1"]);
  assert.deepEqual(events.tokens, ["connect"]);
  ws.last().accept();
  assert.equal(client.state, "open");
});

test("failed attempts back off exponentially with full jitter up to the cap", async () => {
  const { client, clock, ws, events } = setup({ random: () => 0.999 });
  client.start();
  await settle();
  const delays = [];
  for (let i = 0; i < 6; i++) {
    ws.last().drop(1006);
    await settle();
    delays.push(clock.pending());
    await clock.advance(clock.pending());
  }
  assert.deepEqual(delays, [999, 1998, 3996, 7992, 7992, 7992]);
  assert.equal(ws.sockets.length, 7);
  // Each failure was probed, the token provider called before every attempt.
  assert.equal(events.probes.length, 6);
  assert.equal(events.tokens.length, 7);
});

test("1012 (node draining) reconnects at once, to the same URL, with last_id", async () => {
  const { client, clock, ws, events } = setup();
  client.start();
  await settle();
  ws.last().accept();
  ws.last().send(note("100-0"));
  ws.last().drop(1012);
  await settle();
  assert.equal(clock.pending(), 0);
  await clock.advance(0);
  assert.equal(ws.sockets.length, 2);
  assert.equal(ws.last().url, "wss://gw.example/ws/notifications/42/?last_id=100-0");
  assert.equal(events.probes.length, 0, "an opened socket is not probed");
});

test("a socket closed soon after opening does not reset the backoff; a stable one does", async () => {
  const { client, clock, ws } = setup({ random: () => 0.999 });
  client.start();
  await settle();
  for (const expected of [999, 1998]) {
    ws.last().accept();
    ws.last().drop(4008);
    await settle();
    assert.equal(clock.pending(), expected);
    await clock.advance(clock.pending());
  }
  ws.last().accept();
  await clock.advance(5000);
  ws.last().drop(4008);
  await settle();
  assert.equal(clock.pending(), 999, "reset after 5 s open");
});

test("4001 calls the token provider again and reconnects at once with the new token", async () => {
  const { client, clock, ws, events } = setup();
  client.start();
  await settle();
  ws.last().accept();
  ws.last().send(note("5-0"));
  ws.last().drop(4001);
  await settle();
  assert.equal(clock.pending(), 0);
  await clock.advance(0);
  assert.deepEqual(events.tokens, ["connect", "expired"]);
  assert.deepEqual(ws.last().protocols, ["bearer", "token-2"]);
  assert.match(ws.last().url, /last_id=5-0$/);
});

for (const [status, error, reason] of [
  [403, "token_for_another_user", "forbidden"],
  [400, "invalid_user_id", "bad_request"],
]) {
  test(`a ${status} refusal stops the client with reason ${reason}`, async () => {
    const { client, clock, ws, events, probeAnswers } = setup();
    probeAnswers.push({ status, body: { error, message: "m" } });
    client.start();
    await settle();
    ws.last().drop(1006);
    await settle();
    assert.equal(client.state, "failed");
    const last = events.states.at(-1);
    assert.deepEqual([last.reason, last.status, last.error], [reason, status, error]);
    assert.equal(clock.timers.length, 0, "no retry scheduled");
    assert.equal(events.probes[0].auth, "Bearer token-1", "the probe asks with the same token");
    assert.equal(events.probes[0].url, "https://gw.example/ws/notifications/42/");
  });
}

test("a 401 gets one fresh token at once; a 401 with the fresh token stops the client", async () => {
  const { client, clock, ws, events, probeAnswers } = setup();
  probeAnswers.push(
    { status: 401, body: { error: "token_expired", message: "token expired" } },
    { status: 401, body: { error: "token_invalid", message: "invalid token: bad signature" } },
  );
  client.start();
  await settle();
  ws.last().drop(1006);
  await settle();
  assert.equal(clock.pending(), 0);
  await clock.advance(0);
  assert.deepEqual(events.tokens, ["connect", "unauthorized"]);
  ws.last().drop(1006);
  await settle();
  assert.equal(client.state, "failed");
  assert.equal(events.states.at(-1).reason, "unauthorized");
  assert.equal(events.states.at(-1).error, "token_invalid");
});

test("a 401 followed by a success clears the fresh-token rule", async () => {
  const { client, clock, ws, probeAnswers } = setup();
  probeAnswers.push({ status: 401, body: { error: "token_expired" } });
  client.start();
  await settle();
  ws.last().drop(1006);
  await settle();
  await clock.advance(0);
  ws.last().accept();
  await clock.advance(10000);
  ws.last().drop(1006);
  await settle();
  // Later: another lone 401 is again given a fresh token, not taken as final.
  probeAnswers.push({ status: 401, body: { error: "token_expired" } });
  await clock.advance(clock.pending());
  ws.last().drop(1006);
  await settle();
  assert.equal(client.state, "reconnecting");
});

test("probes that cannot tell (network error, 503, same-origin without Origin) keep retrying", async () => {
  const { client, clock, ws, probeAnswers } = setup();
  probeAnswers.push(
    { throws: true },
    { status: 503, body: { error: "shutting_down" } },
    { status: 403, body: { error: "origin_forbidden", message: "no Origin header: only pages ..." } },
    { status: 400, body: null },
    { status: 429, body: { error: "too_many_sockets_for_user" } },
  );
  client.start();
  await settle();
  for (let i = 0; i < 5; i++) {
    ws.last().drop(1006);
    await settle();
    assert.equal(client.state, "waiting", `answer ${i}`);
    await clock.advance(clock.pending());
  }
});

test("1002 and 1009 stop the client: retrying cannot fix its frames", async () => {
  for (const [code, reason] of [
    [1002, "protocol_error"],
    [1009, "frame_too_large"],
  ]) {
    const { client, ws, events } = setup();
    client.start();
    await settle();
    ws.last().accept();
    ws.last().drop(code);
    await settle();
    assert.equal(client.state, "failed");
    assert.equal(events.states.at(-1).reason, reason);
  }
});

test("offline: no attempt until the browser is online again, then at once", async () => {
  const { client, clock, ws, win } = setup();
  win.navigator.onLine = false;
  client.start();
  await settle();
  assert.equal(client.state, "offline");
  assert.equal(ws.sockets.length, 0);
  await clock.advance(60000);
  assert.equal(ws.sockets.length, 0, "no polling while offline");
  win.navigator.onLine = true;
  win.emit("online");
  await settle();
  assert.equal(ws.sockets.length, 1);
});

test("going offline during a backoff cancels the timer; online reconnects at once", async () => {
  const { client, clock, ws, win } = setup({ random: () => 0.999 });
  client.start();
  await settle();
  for (let i = 0; i < 3; i++) {
    ws.last().drop(1006);
    await settle();
    await clock.advance(clock.pending());
  }
  ws.last().drop(1006);
  await settle();
  win.navigator.onLine = false;
  win.emit("offline");
  assert.equal(client.state, "offline");
  assert.equal(clock.timers.length, 0);
  win.navigator.onLine = true;
  win.emit("online");
  await settle();
  assert.equal(ws.sockets.length, 5);
  // The backoff starts over after coming back.
  ws.last().drop(1006);
  await settle();
  assert.equal(clock.pending(), 999);
});

test("the page becoming visible again skips the rest of the backoff", async () => {
  const { client, clock, ws, win } = setup({ random: () => 0.999 });
  client.start();
  await settle();
  ws.last().drop(1006);
  await settle();
  win.setVisible(false);
  assert.equal(ws.sockets.length, 1);
  win.setVisible(true);
  await settle();
  assert.equal(ws.sockets.length, 2);
  assert.equal(clock.timers.length, 0, "the pending retry was cancelled");
  // Visible while open does nothing.
  ws.last().accept();
  win.setVisible(true);
  await settle();
  assert.equal(ws.sockets.length, 2);
});

test("deduplicates by id across reconnects, in order, and passes id-less frames", async () => {
  const { client, clock, ws, events } = setup();
  client.start();
  await settle();
  ws.last().accept();
  ws.last().send(note("1-0"));
  ws.last().send(note("2-0"));
  ws.last().drop(1012);
  await settle();
  await clock.advance(0);
  ws.last().accept();
  // A replay overlapping what was delivered, then new ones.
  for (const id of ["1-0", "2-0", "3-0", "2-0", "10-0"]) ws.last().send(note(id));
  ws.last().send({ type: "info", message: "plain" });
  ws.last().send("not json");
  assert.deepEqual(events.notifications, ["1-0", "2-0", "3-0", "10-0", "plain"]);
  assert.equal(client.lastId, "10-0");
});

test("the last id survives a new client (page reload) through storage, per user", async () => {
  const storage = new MemoryStorage();
  const first = setup({ storage });
  first.client.start();
  await settle();
  first.ws.last().accept();
  first.ws.last().send(note("77-3"));
  first.client.stop();
  assert.equal(first.ws.last().closedWith, 1000);
  assert.equal(storage.getItem("notify:last_id:42"), "77-3");

  const second = setup({ storage });
  second.client.start();
  await settle();
  assert.equal(second.ws.last().url, "wss://gw.example/ws/notifications/42/?last_id=77-3");
  // Garbage in storage is ignored, not sent (it would get a 400).
  storage.setItem("notify:last_id:42", "x");
  const third = setup({ storage });
  third.client.start();
  await settle();
  assert.equal(third.ws.last().url, "wss://gw.example/ws/notifications/42/");
});

test("the stored id never moves back (another tab is further along)", async () => {
  const storage = new MemoryStorage();
  storage.setItem("notify:last_id:42", "50-0");
  const { client, ws } = setup({ storage, options: { storage } });
  client.start();
  await settle();
  ws.last().accept();
  // This tab resumed from 50-0, so it only sees later ones; simulate another tab writing.
  storage.setItem("notify:last_id:42", "60-0");
  ws.last().send(note("55-0"));
  assert.equal(storage.getItem("notify:last_id:42"), "60-0");
  ws.last().send(note("61-0"));
  assert.equal(storage.getItem("notify:last_id:42"), "61-0");
});

test("the missed frame goes to onMissed and resets the resume point, even backwards", async () => {
  const { client, clock, ws, events, storage } = setup();
  storage.setItem("notify:last_id:42", "900-0");
  client.start();
  await settle();
  ws.last().accept();
  const missed = {
    id: "100-0",
    type: "warning",
    message: "Some notifications could not be delivered",
    event: "gateway.missed",
    data: { since: "900-0" },
  };
  ws.last().send(missed);
  ws.last().send(note("101-0"));
  assert.deepEqual(events.missed.map((m) => m.data.since), ["900-0"]);
  assert.deepEqual(events.notifications, ["101-0"], "not dropped as older than 900-0");
  assert.equal(storage.getItem("notify:last_id:42"), "101-0");
  ws.last().drop(1012);
  await settle();
  await clock.advance(0);
  assert.match(ws.last().url, /last_id=101-0$/);
});

test("stop() during a backoff cancels it; late events of old sockets are ignored", async () => {
  const { client, clock, ws, events } = setup();
  client.start();
  await settle();
  const old = ws.last();
  old.drop(1006);
  await settle();
  client.stop();
  assert.equal(clock.timers.length, 0);
  assert.equal(client.state, "stopped");
  old.send(note("1-0"));
  assert.deepEqual(events.notifications, []);
  await clock.advance(60000);
  assert.equal(ws.sockets.length, 1);
});

test("no token provider: no subprotocol (authentication off)", async () => {
  const { client, ws } = setup({ options: { getToken: undefined } });
  client.start();
  await settle();
  assert.equal(ws.last().protocols, undefined);
});

test("bad options are refused with a clear error", () => {
  const { FakeWebSocket } = fakeSockets();
  assert.throws(
    () => createNotificationClient({ url: "https://x", userId: "042", WebSocket: FakeWebSocket }),
    /userId must be a positive integer/,
  );
  assert.throws(
    () => createNotificationClient({ url: "ftp://x", userId: 1, WebSocket: FakeWebSocket, env: {} }),
    /url must start with/,
  );
  assert.throws(() => createNotificationClient({ url: "https://x", userId: 1, env: {} }), /no WebSocket/);
});
