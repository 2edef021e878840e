// Real parts for the Chromium tests: redis-server and gateway processes on free ports, a TCP
// proxy in front of replicas, HS256 tokens, and Debian's chromium driven by playwright-core.
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const ARTIFACTS = join(ROOT, "target", "browser-artifacts");
const DEADLINE_MS = 20000;

/** Where a program is, or an error naming the package that installs it. */
function requireProgram(program, debianPackage) {
  for (const dir of (process.env.PATH ?? "").split(":").concat(["/usr/sbin", "/usr/bin"])) {
    if (existsSync(join(dir, program))) return join(dir, program);
  }
  throw new Error(`${program} not found: install it with \`sudo apt-get install -y ${debianPackage}\``);
}

/** The gateway executable: $GATEWAY_BIN, else the gateway-e2e binary `cargo test -p e2e` builds. */
export function gatewayBinary() {
  if (process.env.GATEWAY_BIN) return process.env.GATEWAY_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? join(ROOT, "target");
  const binary = join(target, "debug", "gateway-e2e");
  if (!existsSync(binary)) {
    throw new Error(`${binary} not built: run \`cargo build -p e2e --bin gateway-e2e\` (or set GATEWAY_BIN)`);
  }
  return binary;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Polls `check` (which may throw or return falsy) until it returns a value. */
export async function waitFor(what, check, deadlineMs = DEADLINE_MS) {
  const deadline = Date.now() + deadlineMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

function track(child) {
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

export async function startRedis() {
  const program = requireProgram("redis-server", "redis-server");
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "browser-redis-"));
  const child = track(
    spawn(program, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], {
      stdio: "ignore",
    }),
  );
  await waitFor(`redis-server on ${port}`, () => redisPing(port));
  return {
    url: `redis://127.0.0.1:${port}`,
    stop() {
      child.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function redisPing(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1", () => socket.write("PING\r\n"));
    socket.on("data", (d) => {
      socket.destroy();
      resolve(d.toString().startsWith("+PONG"));
    });
    socket.on("error", () => resolve(false));
  });
}

/**
 * A gateway process. `addr` is the public listener (pages, sockets, inbox), `internal` the
 * internal one (`server.internal_bind`: publish, metrics, readyz).
 */
export async function startGateway({ redis = null, env = {} } = {}) {
  const port = await freePort();
  const internalPort = await freePort();
  const log = [];
  const child = track(
    spawn(gatewayBinary(), [], {
      env: {
        PATH: process.env.PATH,
        RUST_LOG: "gateway=debug,info",
        GW__SERVER__BIND: `127.0.0.1:${port}`,
        GW__SERVER__INTERNAL_BIND: `127.0.0.1:${internalPort}`,
        GW__SERVER__WORKERS: "2",
        GW__REDIS__URL: redis ? redis.url : "",
        GW__REDIS__RECONNECT_MAX_MS: "500",
        GW__REDIS__PING_INTERVAL_MS: "1000",
        GW__AUTH__MODE: "none",
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
  for (const stream of [child.stdout, child.stderr]) stream.on("data", (d) => log.push(d.toString()));
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const gateway = {
    addr: `127.0.0.1:${port}`,
    internal: `127.0.0.1:${internalPort}`,
    url: `http://127.0.0.1:${port}`,
    log: () => log.join(""),
    exited,
    /** SIGTERM: the node drains (closes its sockets with 1012) and exits. */
    async terminate() {
      child.kill("SIGTERM");
      return exited;
    },
    /** Kills it; its log is kept in target/browser-artifacts/ for failures. */
    stop() {
      child.kill("SIGKILL");
      saveArtifact(`gateway-${port}.log`, log.join(""));
    },
  };
  await waitFor(`gateway on ${port} ready\n${gateway.log()}`, async () => {
    const response = await fetch(`http://${gateway.internal}/readyz`);
    return response.status === 200;
  });
  return gateway;
}

/** POST /api/publish on the internal API; returns the answer. */
export async function publish(gateway, body) {
  const response = await fetch(`http://${gateway.internal}/api/publish`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(`publish refused ${response.status}: ${JSON.stringify(answer)}`);
  return answer;
}

/** The user's retained notification ids, oldest first (the inbox API, paged). */
export async function historyIds(gateway, user, headers = {}) {
  const ids = [];
  let before = null;
  for (;;) {
    const query = before ? `?before=${before}` : "";
    const response = await fetch(`http://${gateway.addr}/api/notifications/${user}${query}`, { headers });
    const page = await response.json();
    if (!response.ok) throw new Error(`inbox ${response.status}: ${JSON.stringify(page)}`);
    ids.push(...page.notifications.map((n) => n.id));
    if (!page.next_before) break;
    before = page.next_before;
  }
  return ids.reverse();
}

/** A metric's value from /metrics. */
export async function metric(gateway, series) {
  const body = await (await fetch(`http://${gateway.internal}/metrics`)).text();
  const line = body.split("\n").find((l) => l.startsWith(`${series} `));
  if (!line) throw new Error(`metric ${series} not found`);
  return Number(line.split(" ")[1]);
}

/** An HS256 key as the gateway reads it (a file), random: never a guessable word. */
export function jwtKey() {
  const key = randomBytes(32).toString("hex");
  const dir = mkdtempSync(join(tmpdir(), "browser-jwt-"));
  const file = join(dir, "hs256.key");
  writeFileSync(file, key);
  return { key, file };
}

/** A simplejwt-shaped access token for `user`, expiring `ttlSeconds` from now. */
export function token(key, user, ttlSeconds) {
  const encode = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const body = `${encode({ alg: "HS256", typ: "JWT" })}.${encode({
    token_type: "access",
    user_id: user,
    iat: now,
    exp: now + ttlSeconds,
    jti: randomBytes(8).toString("hex"),
  })}`;
  return `${body}.${createHmac("sha256", key).update(body).digest("base64url")}`;
}

/**
 * A TCP proxy in front of replicas, as a load balancer without stickiness: each connection
 * goes to the next backend in turn, and to the one after when a backend refuses.
 */
export async function startProxy(backends) {
  const port = await freePort();
  let next = 0;
  const open = new Set();
  const server = net.createServer((client) => {
    open.add(client);
    client.on("close", () => open.delete(client));
    client.pause();
    const tryBackend = (left) => {
      if (left === 0) return client.destroy();
      const target = backends[next++ % backends.length];
      const [host, p] = target.split(":");
      const upstream = net.connect(Number(p), host);
      upstream.once("error", () => tryBackend(left - 1));
      upstream.once("connect", () => {
        upstream.removeAllListeners("error");
        upstream.on("error", () => client.destroy());
        client.on("error", () => upstream.destroy());
        upstream.on("close", () => client.destroy());
        client.on("close", () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
    };
    tryBackend(backends.length);
  });
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    addr: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    stop() {
      server.close();
      for (const socket of open) socket.destroy();
    },
  };
}

/** Debian's chromium, headless, with a fresh profile. */
export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!existsSync(executablePath)) {
    throw new Error(`${executablePath} not found: install it with \`sudo apt-get install -y chromium\``);
  }
  const profile = mkdtempSync(join(tmpdir(), "browser-profile-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1200, height: 720 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      // Pages the tests serve by interception (the hook page) have no network address, so
      // Chromium would treat them as public and block their sockets to 127.0.0.1.
      "--disable-features=LocalNetworkAccessChecks",
    ],
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** What the demo page saw: ids received, missed frames, states. */
export function pageState(page) {
  return page.evaluate(() => ({
    received: [...window.demo.received],
    missed: window.demo.missed.map((m) => ({ id: m.id, since: m.data.since })),
    states: window.demo.states.map((s) => ({ ...s })),
    state: window.demo.client ? window.demo.client.state : null,
  }));
}

export async function waitForState(page, state) {
  await page.waitForFunction((s) => window.demo && window.demo.client && window.demo.client.state === s, state, {
    timeout: DEADLINE_MS,
  });
}

export async function waitForReceived(page, count) {
  await page.waitForFunction((n) => window.demo.received.length >= n, count, { timeout: DEADLINE_MS });
}

export function saveArtifact(name, data) {
  mkdirSync(ARTIFACTS, { recursive: true });
  writeFileSync(join(ARTIFACTS, name), data);
  return join(ARTIFACTS, name);
}


const HOOK_PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>hook</title>
<script src="/__hook/react.umd.js"></script>
<script src="/__hook/react-dom.umd.js"></script>
<script type="importmap">{"imports": {"react": "/__hook/react-shim.js"}}</script>
</head><body><div id="root"></div>
<script type="module">
import { useWebSocketNotifications } from "/__hook/react.js";
const { createElement: h, useState } = React;
window.toasts = [];
const params = new URLSearchParams(location.search);
function App() {
  const [user, setUser] = useState(params.get("user"));
  const [shown, setShown] = useState([]);
  window.login = setUser;
  window.logout = () => setUser(null);
  // The app's toast function, as the hook calls it: (type, message).
  const toast = (type, message, n) => {
    window.toasts.push(n.id);
    setShown((list) => [...list, { type, message, id: n.id }]);
  };
  const { state, error } = useWebSocketNotifications(user, {
    toast,
    url: params.get("gw") || undefined,
    getToken: window.hookGetToken ? (context) => window.hookGetToken(context) : undefined,
  });
  window.hookState = state;
  window.hookError = error;
  return h("div", null,
    h("p", { id: "state" }, state),
    h("ul", { id: "toasts" }, shown.map((t) => h("li", { key: t.id, className: "toast-" + t.type, "data-id": t.id }, t.message))));
}
ReactDOM.createRoot(document.getElementById("root")).render(h(App));
</script></body></html>`;

/**
 * A page that uses the React hook (clients/js/src/react.js with React 18's UMD build), served
 * as if from `base` (the gateway's or the proxy's origin) by intercepting its paths.
 */
export async function openHookPage(context, base, user, { gateway, provider, state = "open" } = {}) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error("hook page error:", e.message));
  if (provider) await page.exposeFunction("hookGetToken", provider);
  const files = {
    "react.js": join(ROOT, "clients/js/src/react.js"),
    "index.js": join(ROOT, "clients/js/src/index.js"),
    "react.umd.js": join(ROOT, "tests/browser/node_modules/react/umd/react.development.js"),
    "react-dom.umd.js": join(ROOT, "tests/browser/node_modules/react-dom/umd/react-dom.development.js"),
  };
  await page.route(`${base}/__hook/**`, (route) => {
    const name = new URL(route.request().url()).pathname.slice("/__hook/".length);
    if (name === "index.html") return route.fulfill({ contentType: "text/html", body: HOOK_PAGE });
    if (name === "react-shim.js") {
      return route.fulfill({
        contentType: "text/javascript",
        body: "export const { useEffect, useRef, useState } = window.React; export default window.React;",
      });
    }
    if (files[name]) return route.fulfill({ contentType: "text/javascript", body: readFileSync(files[name]) });
    return route.fulfill({ status: 404, body: "" });
  });
  const query = new URLSearchParams({ user: String(user), ...(gateway ? { gw: gateway } : {}) });
  await page.goto(`${base}/__hook/index.html?${query}`);
  await page.waitForFunction((s) => window.hookState === s, state, { timeout: DEADLINE_MS });
  return page;
}
