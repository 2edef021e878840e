import type { ClientOptions, MissedFrame, Notification, State, StateInfo, TokenContext } from "./index.js";

export interface HookOptions {
  /** ws(s):// or http(s):// base of the gateway; default: the page's own origin. */
  url?: string;
  getToken?: (context: TokenContext) => string | null | undefined | Promise<string | null | undefined>;
  /** The app's toast function, called as toast(type, message, notification). */
  toast?: (type: Notification["type"], message: string, notification: Notification) => void;
  onNotification?: (notification: Notification) => void;
  /** Default: the missed frame is shown with toast like a warning. */
  onMissed?: (frame: MissedFrame) => void;
  onStateChange?: (state: State, info: StateInfo) => void;
  /** Anything else the client takes (storage, backoff, ...). */
  clientOptions?: Partial<ClientOptions>;
}

export interface HookResult {
  state: State;
  connected: boolean;
  /** Why the client stopped, when it did. */
  error: StateInfo | null;
}

export function useWebSocketNotifications(
  userId: string | number | null | undefined,
  options?: HookOptions,
): HookResult;
export default useWebSocketNotifications;
