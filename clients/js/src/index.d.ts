/** A notification frame: the published object with its history id first. */
export interface Notification {
  /** "<ms>-<seq>", increasing per user; absent for plain-PUBLISHed notices. */
  id?: string;
  type: "success" | "info" | "warning" | "error";
  message: string;
  event?: string;
  data?: Record<string, unknown>;
  timestamp?: number;
  [field: string]: unknown;
}

/** The `gateway.missed` frame: notifications after `data.since` could not be delivered. */
export interface MissedFrame extends Notification {
  id: string;
  event: "gateway.missed";
  data: { since: string };
}

export type State =
  | "idle"
  | "connecting"
  | "open"
  | "reconnecting"
  | "waiting"
  | "offline"
  | "failed"
  | "stopped";

/** Why the client stopped for good (state "failed"). */
export type FailureReason =
  | "forbidden"
  | "unauthorized"
  | "bad_request"
  | "protocol_error"
  | "frame_too_large"
  | "bad_url";

export interface StateInfo {
  /** Close code of the socket that ended, when one did. */
  code?: number;
  /** HTTP status of a refused upgrade, as the probe learnt it. */
  status?: number;
  /** The gateway's error code, e.g. "token_for_another_user". */
  error?: string | null;
  message?: string | null;
  /** Set with state "failed". */
  reason?: FailureReason | "token_provider_failed";
  /** Set with "waiting" and "reconnecting". */
  delayMs?: number;
  attempt?: number;
  /** Set with "open": the id the socket resumed after. */
  resumedFrom?: string | null;
}

export interface TokenContext {
  userId: string;
  /** "connect" before every connect, "expired" after a 4001, "unauthorized" after a 401. */
  reason: "connect" | "expired" | "unauthorized";
}

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ClientOptions {
  /** ws(s):// or http(s):// base of the gateway; default: the page's own origin. */
  url?: string;
  userId: string | number;
  /** Called before every connect; return the access token, or null when auth is off. */
  getToken?: (context: TokenContext) => string | null | undefined | Promise<string | null | undefined>;
  onNotification?: (notification: Notification) => void;
  onMissed?: (frame: MissedFrame) => void;
  onStateChange?: (state: State, info: StateInfo) => void;
  /** Where the last id is kept: default localStorage; null keeps it in memory only. */
  storage?: StorageLike | null;
  /** Default: user => `notify:last_id:${user}`. */
  storageKey?: (userId: string) => string;
  /** Full-jitter exponential backoff: default { baseMs: 1000, maxMs: 30000 }. */
  backoff?: { baseMs?: number; maxMs?: number };
  /** A socket open this long resets the backoff (default 5000). */
  stableMs?: number;
  /** Test seams. */
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
  env?: unknown;
  setTimeout?: (f: () => void, ms: number) => unknown;
  clearTimeout?: (timer: unknown) => void;
  now?: () => number;
  random?: () => number;
}

export interface NotificationClient {
  start(): void;
  stop(): void;
  readonly state: State;
  readonly lastId: string | null;
  /** Forgets the stored last id (e.g. on logout). */
  forget(): void;
}

export function createNotificationClient(options: ClientOptions): NotificationClient;
/** True when id `a` comes after id `b`. */
export function isAfter(a: string, b: string | null): boolean;
export function backoffDelay(
  attempt: number,
  backoff: { baseMs: number; maxMs: number },
  random?: () => number,
): number;
