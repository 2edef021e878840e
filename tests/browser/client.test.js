// The browser client (clients/js) and the demo page in Debian's chromium, against real
// gateway processes (and Redis where replicas are needed). Each test asserts on what the page
// shows and on the exact sequence of ids it received. Run by tests/js.sh.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { copyFileSync } from "node:fs";

import {
  historyIds,
  jwtKey,
  launchBrowser,
  openHookPage,
  metric,
  pageState,
  publish,
  saveArtifact,
  startGateway,
  startProxy,
  startRedis,
  token,
  waitFor,
  waitForReceived,
  waitForState,
} from "./harness.js";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** A fresh page (the profile, and so localStorage, is shared by the tests' pages). */
async function openDemo(base, user, { provider } = {}) {
  const page = await browser.context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  if (provider) await page.exposeFunction("demoGetToken", provider);
  await page.goto(`${base}/?user=${user}`);
  await waitForState(page, "open");
  return page;
}

const message = (i) => ({ type: "info", message: `note ${i}` });

test("notifications appear in order, each once, as toasts and in the list", async () => {
  const gateway = await startGateway();
  try {
    const user = 101;
    const page = await openDemo(gateway.url, user);
    for (let i = 0; i < 20; i++) await publish(gateway, { user, ...message(i) });
    await waitForReceived(page, 20);
    const seen = await pageState(page);
    assert.deepEqual(seen.received, await historyIds(gateway, user));
    assert.equal(new Set(seen.received).size, 20);
    // The page shows them: newest first in the list, and as toasts.
    const listed = await page.$$eval("#received li", (lis) => lis.map((li) => li.dataset.id));
    assert.deepEqual(listed, [...seen.received].reverse());
    assert.equal(await page.locator(".toast", { hasText: "note 19" }).count(), 1);
    await page.close();
  } finally {
    gateway.stop();
  }
});

test("SIGTERM on one of two replicas (1012): the page resumes through the other, nothing lost or doubled", async () => {
  const redis = await startRedis();
  const replicas = [];
  let proxy;
  try {
    for (let i = 0; i < 2; i++) {
      replicas.push(await startGateway({ redis, env: { GW__DEMO__ENABLED: "true" } }));
    }
    proxy = await startProxy(replicas.map((r) => r.addr));
    const user = 102;
    const page = await openDemo(proxy.url, user);
    const holder = await waitFor("the replica holding the socket", async () => {
      for (const r of replicas) if ((await metric(r, "gateway_sockets_open")) === 1) return r;
      return null;
    });
    const other = replicas.find((r) => r !== holder);

    // Steady publishing through the replica that stays, while the other drains.
    const total = 60;
    let drained = null;
    for (let i = 0; i < total; i++) {
      await publish(other, { user, ...message(i) });
      if (i === 20) drained = holder.terminate();
      await new Promise((r) => setTimeout(r, 15));
    }
    const exit = await drained;
    assert.equal(exit.code, 0, `drained and exited cleanly: ${JSON.stringify(exit)}`);
    await waitForReceived(page, total);
    const seen = await pageState(page);
    assert.deepEqual(seen.received, await historyIds(other, user), "every id, in order, once");
    const reconnects = seen.states.filter((s) => s.state === "reconnecting");
    assert.equal(reconnects[0]?.code, 1012, JSON.stringify(seen.states));
    assert.equal(reconnects[0]?.delayMs, 0, "at once");
    assert.equal(await metric(other, "gateway_sockets_open"), 1, "the page is now on the other replica");
    assert.equal(seen.missed.length, 0);
    await page.close();
  } finally {
    proxy?.stop();
    for (const r of replicas) r.stop();
    redis.stop();
  }
});

test("token expiry (4001): the provider is called again, the page reconnects, nothing is lost", async () => {
  const key = jwtKey();
  const gateway = await startGateway({
    env: {
      GW__AUTH__MODE: "jwt",
      GW__AUTH__HS256_SECRET_FILE: key.file,
      GW__AUTH__EXPIRY_GRACE_MS: "0",
    },
  });
  try {
    const user = 103;
    const calls = [];
    // The first token lives 2 s; the ones after, an hour.
    const provider = ({ reason }) => {
      calls.push(reason);
      return token(key.key, user, calls.length === 1 ? 2 : 3600);
    };
    const page = await openDemo(gateway.url, user, { provider });
    const total = 30;
    for (let i = 0; i < total; i++) {
      await publish(gateway, { user, ...message(i) });
      await new Promise((r) => setTimeout(r, 100));
    }
    await waitForReceived(page, total);
    const seen = await pageState(page);
    const auth = { Authorization: `Bearer ${token(key.key, user, 60)}` };
    assert.deepEqual(seen.received, await historyIds(gateway, user, auth));
    assert.deepEqual(calls, ["connect", "expired"], "called again after the 4001");
    assert.ok(
      seen.states.some((s) => s.state === "reconnecting" && s.code === 4001),
      JSON.stringify(seen.states),
    );
    await page.close();
  } finally {
    gateway.stop();
  }
});

test("refusals retrying cannot fix stop the page with the reason: 403 and 401 after a fresh token", async () => {
  const key = jwtKey();
  const gateway = await startGateway({
    env: { GW__AUTH__MODE: "jwt", GW__AUTH__HS256_SECRET_FILE: key.file },
  });
  try {
    // What the client's probe relies on: a plain GET of the socket URL runs the upgrade's
    // checks and answers the same refusal, or 400 not_websocket when every check passed.
    const probe = async (user, bearer) => {
      const response = await fetch(`${gateway.url}/ws/notifications/${user}/`, {
        headers: bearer ? { Authorization: `Bearer ${bearer}` } : {},
      });
      return [response.status, (await response.json()).error];
    };
    assert.deepEqual(await probe(104, token(key.key, 104, 3600)), [400, "not_websocket"]);
    assert.deepEqual(await probe(104, token(key.key, 999, 3600)), [403, "token_for_another_user"]);
    assert.deepEqual(await probe(104, token(key.key, 104, -120)), [401, "token_expired"]);
    assert.deepEqual(await probe(104, null), [401, "token_missing"]);
    assert.deepEqual(await probe("0", token(key.key, 104, 3600)), [400, "invalid_user_id"]);

    const cases = [
      // A token for another user: 403, whatever the token.
      { provider: () => token(key.key, 999, 3600), reason: "forbidden", status: 403 },
      // A token signed with another key, again after a fresh one: 401 twice.
      { provider: () => token("a".repeat(64), 104, 3600), reason: "unauthorized", status: 401 },
    ];
    for (const { provider, reason, status } of cases) {
      const calls = [];
      const page = await browser.context.newPage();
      await page.exposeFunction("demoGetToken", (context) => {
        calls.push(context.reason);
        return provider();
      });
      await page.goto(`${gateway.url}/?user=104`);
      await waitForState(page, "failed");
      const last = (await pageState(page)).states.at(-1);
      assert.equal(last.reason, reason);
      assert.equal(last.status, status);
      assert.match(await page.textContent("#state"), new RegExp(`failed: ${reason}`));
      assert.deepEqual(calls, status === 401 ? ["connect", "unauthorized"] : ["connect"]);
      await page.close();
    }
  } finally {
    gateway.stop();
  }
});

test("a resume from an id trimmed out of history: the missed callback fires and the page shows it", async () => {
  const gateway = await startGateway({ env: { GW__HISTORY__MAX_LEN: "3" } });
  try {
    const user = 105;
    let page = await openDemo(gateway.url, user);
    await publish(gateway, { user, ...message(0) });
    await waitForReceived(page, 1);
    const [first] = (await pageState(page)).received;
    // Away from the page (same tab, as a reload: a second page of the context could read the
    // stored id before the closed one's write reached the browser's storage).
    await page.goto("about:blank");
    for (let i = 1; i <= 10; i++) await publish(gateway, { user, ...message(i) });

    await page.goto(`${gateway.url}/?user=${user}`);
    await page.waitForFunction(() => window.demo.missed.length === 1 && window.demo.received.length === 3);
    const seen = await pageState(page);
    assert.equal(seen.missed[0].since, first, "the gap starts at the stored id");
    assert.deepEqual(seen.received, await historyIds(gateway, user), "then the 3 retained ones");
    assert.ok(await page.isVisible("#missed"));
    assert.match(await page.textContent("#missed"), /could not be delivered/);
    await page.close();
  } finally {
    gateway.stop();
  }
});

test("a page reload resumes from the stored id: what was published meanwhile arrives, nothing twice", async () => {
  const gateway = await startGateway();
  try {
    const user = 106;
    const page = await openDemo(gateway.url, user);
    for (let i = 0; i < 3; i++) await publish(gateway, { user, ...message(i) });
    await waitForReceived(page, 3);
    const before = (await pageState(page)).received;
    await page.goto("about:blank");
    for (let i = 3; i < 6; i++) await publish(gateway, { user, ...message(i) });
    await page.goto(`${gateway.url}/?user=${user}`);
    await waitForState(page, "open");
    await waitForReceived(page, 3);
    const after = await pageState(page);
    const all = await historyIds(gateway, user);
    assert.deepEqual(before, all.slice(0, 3));
    assert.deepEqual(after.received, all.slice(3), "exactly the three published while away");
    assert.equal(after.states.find((s) => s.state === "open").resumedFrom, before[2]);
    await page.close();
  } finally {
    gateway.stop();
  }
});

test("the demo page's publish form reaches the socket (and the screenshot for the README)", async () => {
  const gateway = await startGateway();
  try {
    const user = 42;
    const page = await openDemo(gateway.url, user);
    await page.selectOption("#event", "carwash.completed");
    await page.click("#send");
    const toast = page.locator(".toast-success", { hasText: "Your car wash (Premium) is complete" });
    await toast.waitFor({ timeout: 20000 });
    await page.waitForFunction(() => /published: 1 node/.test(document.querySelector("#publish-result").textContent));
    const seen = await pageState(page);
    assert.deepEqual(seen.received, await historyIds(gateway, user));
    assert.equal(seen.received.length, 1);
    // The toast slides in: the picture is taken once it has.
    await toast.evaluate((el) => Promise.all(el.getAnimations().map((a) => a.finished)));
    const shot = saveArtifact("demo.png", await page.screenshot({ clip: { x: 0, y: 0, width: 1200, height: 520 } }));
    if (process.env.UPDATE_DOCS_SCREENSHOT) copyFileSync(shot, new URL("../../docs/demo.png", import.meta.url));
    await page.close();
  } finally {
    gateway.stop();
  }
});

test("the demo page and its publish endpoint exist only where they should", async () => {
  const redis = await startRedis();
  const scaled = await startGateway({ redis });
  const keyed = await startGateway({ env: { GW__PUBLISH__API_KEYS: randomBytes(16).toString("hex") } });
  try {
    // Scaled out (auto): no page, no client, no form endpoint.
    for (const path of ["/", "/demo/client.js"]) {
      assert.equal((await fetch(`${scaled.url}${path}`)).status, 404, path);
    }
    assert.equal((await fetch(`${scaled.url}/demo/publish`, { method: "POST", body: "{}" })).status, 404);
    // With publish API keys the form endpoint refuses even loopback: a key is needed.
    const refused = await fetch(`${keyed.url}/demo/publish`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user: 1, type: "info", message: "x" }),
    });
    assert.equal(refused.status, 401);
    assert.match((await refused.json()).message, /publish API keys are configured/);
    // The page served is the package's file.
    const served = await (await fetch(`${keyed.url}/demo/client.js`)).text();
    const shipped = await import("node:fs").then((fs) =>
      fs.readFileSync(new URL("../../clients/js/src/index.js", import.meta.url), "utf8"),
    );
    assert.equal(served, shipped);
  } finally {
    scaled.stop();
    keyed.stop();
    redis.stop();
  }
});

test("the React hook: connects on login, toasts every id once across a replica drain and a reload, disconnects on logout", async () => {
  const redis = await startRedis();
  const replicas = [];
  let proxy;
  try {
    for (let i = 0; i < 2; i++) replicas.push(await startGateway({ redis }));
    proxy = await startProxy(replicas.map((r) => r.addr));
    const user = 107;
    const page = await openHookPage(browser.context, proxy.url, user);
    const sockets = async () => {
      let open = 0;
      for (const r of replicas) if (!r.gone) open += await metric(r, "gateway_sockets_open");
      return open;
    };
    const holder = await waitFor("the replica holding the hook's socket", async () => {
      for (const r of replicas) if ((await metric(r, "gateway_sockets_open")) === 1) return r;
      return null;
    });
    const other = replicas.find((r) => r !== holder);
    const toasted = [];
    const toastsSoFar = () => page.evaluate(() => [...window.toasts]);

    for (let i = 0; i < 10; i++) await publish(other, { user, ...message(i) });
    const draining = holder.terminate();
    for (let i = 10; i < 20; i++) {
      await publish(other, { user, ...message(i) });
      await new Promise((r) => setTimeout(r, 15));
    }
    await draining;
    holder.gone = true;
    await page.waitForFunction(() => window.toasts.length === 20);
    toasted.push(...(await toastsSoFar()));

    await page.goto("about:blank");
    for (let i = 20; i < 25; i++) await publish(other, { user, ...message(i) });
    await page.goto(`${proxy.url}/__hook/index.html?user=${user}`);
    await page.waitForFunction(() => window.toasts.length === 5);
    toasted.push(...(await toastsSoFar()));
    assert.deepEqual(toasted, await historyIds(other, user), "every id once, in order");
    assert.equal(await page.locator("#toasts li.toast-info", { hasText: "note 24" }).count(), 1);

    await page.evaluate(() => window.logout());
    await page.waitForFunction(() => window.hookState === "idle");
    await waitFor("the socket to close on logout", async () => (await sockets()) === 0);
    await page.close();
  } finally {
    proxy?.stop();
    for (const r of replicas) r.stop();
    redis.stop();
  }
});

test("a page of another origin learns why its socket was refused (CORS on the socket path, allowed origins only)", async () => {
  const key = jwtKey();
  const gateway = await startGateway({
    env: {
      GW__AUTH__MODE: "jwt",
      GW__AUTH__HS256_SECRET_FILE: key.file,
      GW__ORIGIN__ALLOWED: "http://frontend.test",
    },
  });
  try {
    const user = 108;
    const opts = (provider, state) => ({ gateway: gateway.url, provider, state });
    // The app's page on its own origin, the gateway on another: delivery works...
    let page = await openHookPage(
      browser.context,
      "http://frontend.test",
      user,
      opts(() => token(key.key, user, 3600), "open"),
    );
    await publish(gateway, { user, ...message(0) });
    await page.waitForFunction(() => window.toasts.length === 1);
    await page.close();
    // ...and a refusal is read through the probe: the client stops with the reason.
    page = await openHookPage(
      browser.context,
      "http://frontend.test",
      user,
      opts(() => token(key.key, 999, 3600), "failed"),
    );
    const error = await page.evaluate(() => window.hookError);
    assert.deepEqual([error.reason, error.status, error.error], ["forbidden", 403, "token_for_another_user"]);
    await page.close();

    // A page of an origin that may not open sockets is refused, and cannot read why: no CORS
    // for it, so its client keeps retrying with backoff (it cannot tell a refusal from an outage).
    page = await openHookPage(
      browser.context,
      "http://elsewhere.test",
      user,
      opts(() => token(key.key, user, 3600), "waiting"),
    );
    await page.close();
    const preflight = (origin) =>
      fetch(`${gateway.url}/ws/notifications/${user}/`, {
        method: "OPTIONS",
        headers: { Origin: origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization" },
      });
    const allowed = await preflight("http://frontend.test");
    assert.equal(allowed.status, 204);
    assert.equal(allowed.headers.get("access-control-allow-origin"), "http://frontend.test");
    assert.match(allowed.headers.get("access-control-allow-headers"), /^authorization$/i);
    const other = await preflight("http://elsewhere.test");
    assert.equal(other.headers.get("access-control-allow-origin"), null);
    // The refusal itself carries the header for the allowed origin only.
    const refusal = async (origin) =>
      (await fetch(`${gateway.url}/ws/notifications/${user}/`, { headers: { Origin: origin } })).headers.get(
        "access-control-allow-origin",
      );
    assert.equal(await refusal("http://frontend.test"), "http://frontend.test");
    assert.equal(await refusal("http://elsewhere.test"), null);
  } finally {
    gateway.stop();
  }
});
