// Browser client of the notification gateway: one WebSocket per user that resumes with
// `last_id`, deduplicates by id, refreshes its token on 4001, reconnects at once on 1012,
// backs off with full jitter otherwise, waits while offline, and stops (saying why) on
// refusals that retrying cannot fix. No dependencies; see README.md for the contract.

const ID = /^(\d{1,20})-(\d{1,20})$/;

/** True when `a` is a later notification id than `b` (ids are "<ms>-<seq>", increasing). */
export function isAfter(a, b) {
  const x = ID.exec(a);
  const y = ID.exec(b);
  if (!x) return false;
  if (!y) return true;
  return compareDigits(x[1], y[1]) > 0 || (x[1] === y[1] && compareDigits(x[2], y[2]) > 0);
}

function compareDigits(a, b) {
  a = a.replace(/^0+(?=\d)/, "");
  b = b.replace(/^0+(?=\d)/, "");
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

/** The delay before retry number `attempt` (0-based): full jitter, capped. */
export function backoffDelay(attempt, { baseMs, maxMs }, random = Math.random) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** Close codes after which reconnecting is pointless until the client is fixed. */
const FATAL_CLOSE = { 1002: "protocol_error", 1003: "protocol_error", 1009: "frame_too_large" };

function defaultStorage(env) {
  try {
    const storage = env.localStorage;
    if (storage) {
      // Access itself can throw (privacy settings, sandboxed iframes).
      storage.getItem("notify:probe");
      return storage;
    }
  } catch {
    /* no persistent storage: the last id lives in memory only */
  }
  return null;
}

/**
 * Creates a client for one user. Nothing happens until `start()`.
 *
 * @param {import("./index.js").ClientOptions} options
 */
export function createNotificationClient(options) {
  const env = options.env ?? globalThis;
  const WebSocketImpl = options.WebSocket ?? env.WebSocket;
  const fetchImpl = options.fetch ?? (env.fetch ? env.fetch.bind(env) : null);
  const setTimer = options.setTimeout ?? ((f, ms) => setTimeout(f, ms));
  const clearTimer = options.clearTimeout ?? ((t) => clearTimeout(t));
  const now = options.now ?? (() => Date.now());
  const random = options.random ?? Math.random;
  const userId = String(options.userId);
  if (!/^[1-9]\d{0,18}$/.test(userId)) {
    throw new TypeError(`userId must be a positive integer, got ${JSON.stringify(options.userId)}`);
  }
  if (typeof WebSocketImpl !== "function") {
    throw new TypeError("no WebSocket implementation: pass options.WebSocket");
  }
  const backoff = { baseMs: 1000, maxMs: 30000, ...options.backoff };
  // A socket that stayed open this long resets the backoff; one closed sooner does not, so a
  // server that accepts and closes at once is not hammered.
  const stableMs = options.stableMs ?? 5000;
  const storage = options.storage === undefined ? defaultStorage(env) : options.storage;
  const storageKey = (options.storageKey ?? ((user) => `notify:last_id:${user}`))(userId);
  const onNotification = options.onNotification ?? (() => {});
  const onMissed = options.onMissed ?? (() => {});
  const onStateChange = options.onStateChange ?? (() => {});
  const getToken = options.getToken ?? (async () => null);
  const base = socketUrl(options.url, env, userId);

  let lastId = readStoredId();
  let state = "idle";
  let socket = null;
  let timer = null;
  let attempt = 0;
  let running = false;
  // Bumped on every start/stop/connect, so that late callbacks of an old attempt do nothing.
  let generation = 0;
  let tokenReason = "connect";
  let freshTokenRefused = false;

  function readStoredId() {
    try {
      const id = storage ? storage.getItem(storageKey) : null;
      return id && ID.test(id) ? id : null;
    } catch {
      return null;
    }
  }

  function remember(id, reset = false) {
    lastId = id;
    if (!storage) return;
    try {
      // Another tab of the same user may be further along: never move the stored id back
      // (unless the gateway said to).
      const stored = storage.getItem(storageKey);
      if (reset || !stored || !ID.test(stored) || isAfter(id, stored)) storage.setItem(storageKey, id);
    } catch {
      /* quota or privacy mode: keep it in memory */
    }
  }

  function setState(next, info = {}) {
    state = next;
    onStateChange(next, info);
  }

  function offline() {
    return env.navigator ? env.navigator.onLine === false : false;
  }

  function connect() {
    clearTimer(timer);
    timer = null;
    if (!running) return;
    if (offline()) {
      setState("offline");
      return;
    }
    const mine = ++generation;
    setState("connecting", { attempt });
    const reason = tokenReason;
    tokenReason = "connect";
    Promise.resolve()
      .then(() => getToken({ userId, reason }))
      .then(
        (token) => {
          if (mine === generation) open(mine, token ?? null);
        },
        (error) => {
          if (mine === generation) retry({ reason: "token_provider_failed", error });
        },
      );
  }

  function open(mine, token) {
    const url = lastId ? `${base}?last_id=${encodeURIComponent(lastId)}` : base;
    let ws;
    try {
      ws = token ? new WebSocketImpl(url, ["bearer", token]) : new WebSocketImpl(url);
    } catch (error) {
      // A malformed URL: no retry can fix it.
      fail({ reason: "bad_url", message: String(error && error.message) });
      return;
    }
    socket = ws;
    let openedAt = null;
    ws.onopen = () => {
      if (mine !== generation) return;
      openedAt = now();
      freshTokenRefused = false;
      setState("open", { resumedFrom: lastId });
    };
    ws.onmessage = (event) => {
      if (mine !== generation) return;
      receive(event.data);
    };
    ws.onclose = (event) => {
      if (mine !== generation) return;
      socket = null;
      closed(mine, event, openedAt, url, token);
    };
  }

  function receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    const id = typeof frame.id === "string" && ID.test(frame.id) ? frame.id : null;
    if (frame.event === "gateway.missed") {
      // Its id is where to resume from, even when below ours (a history that was reset
      // never issued our id): taken as it is, or what follows would look like duplicates.
      if (id) remember(id, true);
      onMissed(frame);
      return;
    }
    if (id && lastId && !isAfter(id, lastId)) return; // already delivered: a replay overlap
    if (id) remember(id);
    onNotification(frame);
  }

  function closed(mine, event, openedAt, url, token) {
    const code = event.code;
    if (!running) return;
    if (openedAt !== null) {
      if (now() - openedAt >= stableMs) attempt = 0;
      if (FATAL_CLOSE[code]) return fail({ reason: FATAL_CLOSE[code], code });
      // The node is draining: the proxy sends us to another replica. At once, once.
      if (code === 1012) return reconnectNow({ code });
      if (code === 4001) {
        tokenReason = "expired";
        return reconnectNow({ code });
      }
      return retry({ code });
    }
    // Refused before opening. A browser hides the HTTP status of a refused upgrade, so ask
    // the same URL over HTTP to learn it (see README: "Why a socket was refused").
    probe(url, token).then((refusal) => {
      if (mine !== generation || !running) return;
      if (!refusal) return retry({ code });
      const { status, error, message } = refusal;
      if (status === 401) {
        if (freshTokenRefused) return fail({ reason: "unauthorized", status, error, message });
        // Perhaps the token went stale between provider and gateway: one fresh try.
        freshTokenRefused = true;
        tokenReason = "unauthorized";
        return reconnectNow({ status, error });
      }
      if (status === 403) return fail({ reason: "forbidden", status, error, message });
      if (status === 400) return fail({ reason: "bad_request", status, error, message });
      retry({ code, status, error });
    });
  }

  /**
   * What the gateway answers a plain GET of the socket URL: `{status, error, message}` for a
   * refusal, or null when the request passed every check (`not_websocket`), or the probe
   * could not tell (network down, another origin without CORS, no fetch).
   */
  async function probe(url, token) {
    if (!fetchImpl) return null;
    try {
      const response = await fetchImpl(url.replace(/^ws/, "http"), {
        headers: token ? { Authorization: `Bearer ${token}` } : {},
        credentials: "omit",
        cache: "no-store",
      });
      if (response.ok) return null;
      let body = {};
      try {
        body = await response.json();
      } catch {
        /* not the gateway's JSON: a proxy's page */
      }
      const error = typeof body.error === "string" ? body.error : null;
      const message = typeof body.message === "string" ? body.message : null;
      if (error === "not_websocket") return null;
      // Same-origin GETs carry no Origin header, which an origin allow-list refuses: that
      // answer says nothing about the socket, whose handshake does carry it.
      if (response.status === 403 && message && message.startsWith("no Origin header")) return null;
      // A 400 that is not the gateway's own answer (a proxy) is not proof of a bad request.
      if (response.status === 400 && !error) return null;
      return { status: response.status, error, message };
    } catch {
      return null;
    }
  }

  function reconnectNow(info) {
    setState("reconnecting", { ...info, delayMs: 0 });
    timer = setTimer(connect, 0);
  }

  function retry(info) {
    const delayMs = backoffDelay(attempt, backoff, random);
    attempt += 1;
    setState("waiting", { ...info, delayMs, attempt });
    timer = setTimer(connect, delayMs);
  }

  function fail(info) {
    running = false;
    generation += 1;
    clearTimer(timer);
    timer = null;
    listen(false);
    setState("failed", info);
  }

  function wake() {
    // Back online or visible again: skip what is left of the backoff.
    if (!running || socket) return;
    if (state === "waiting" || state === "offline") {
      attempt = 0;
      connect();
    }
  }
  function onOnline() {
    wake();
  }
  function onOffline() {
    if (running && !socket && state === "waiting") {
      clearTimer(timer);
      timer = null;
      setState("offline");
    }
  }
  function onVisibility() {
    if (env.document && env.document.visibilityState === "visible") wake();
  }

  function listen(add) {
    const method = add ? "addEventListener" : "removeEventListener";
    if (typeof env[method] === "function") {
      env[method]("online", onOnline);
      env[method]("offline", onOffline);
    }
    if (env.document && typeof env.document[method] === "function") {
      env.document[method]("visibilitychange", onVisibility);
    }
  }

  return {
    /** Opens the socket and keeps it open until `stop()` or a refusal retrying cannot fix. */
    start() {
      if (running) return;
      running = true;
      attempt = 0;
      freshTokenRefused = false;
      listen(true);
      connect();
    },
    /** Closes the socket (1000) and stops reconnecting. */
    stop() {
      if (!running && state !== "failed") return;
      running = false;
      generation += 1;
      clearTimer(timer);
      timer = null;
      listen(false);
      if (socket) {
        socket.onopen = socket.onmessage = socket.onclose = null;
        try {
          socket.close(1000);
        } catch {
          /* already closing */
        }
        socket = null;
      }
      setState("stopped");
    },
    /** The state: idle, connecting, open, reconnecting, waiting, offline, failed or stopped. */
    get state() {
      return state;
    },
    /** The id of the last notification received (also in storage), or null. */
    get lastId() {
      return lastId;
    },
    /** Forgets the stored id (e.g. on logout). */
    forget() {
      lastId = null;
      try {
        if (storage) storage.removeItem(storageKey);
      } catch {
        /* nothing stored */
      }
    },
  };
}

/** `ws(s)://host/ws/notifications/<user>/` from an http(s)/ws(s) base URL or the page's. */
function socketUrl(url, env, userId) {
  let base = url;
  if (!base) {
    const location = env.location;
    if (!location) throw new TypeError("options.url is required outside a browser page");
    base = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;
  }
  base = String(base).replace(/^http/, "ws").replace(/\/+$/, "");
  if (!/^wss?:\/\//.test(base)) {
    throw new TypeError(`url must start with ws://, wss://, http:// or https://, got ${JSON.stringify(url)}`);
  }
  return `${base}/ws/notifications/${userId}/`;
}
