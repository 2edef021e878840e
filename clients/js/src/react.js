// React hook over the client: replaces the app's useWebSocketNotifications. Connects while a
// user is logged in (userId set), disconnects on logout or unmount, and shows each
// notification with the app's toast function as toast(type, message).
import { useEffect, useRef, useState } from "react";

import { createNotificationClient } from "./index.js";

/**
 * @param {string|number|null|undefined} userId  the logged-in user, or null/undefined when none
 * @param {import("./react.js").HookOptions} options
 */
export function useWebSocketNotifications(userId, options = {}) {
  const [status, setStatus] = useState({ state: "idle", info: {} });
  // The latest callbacks without reconnecting when the app passes new closures each render.
  const latest = useRef(options);
  latest.current = options;
  const { url } = options;

  useEffect(() => {
    if (userId === null || userId === undefined || userId === "") {
      setStatus({ state: "idle", info: {} });
      return undefined;
    }
    const client = createNotificationClient({
      ...latest.current.clientOptions,
      url,
      userId,
      getToken: (context) => (latest.current.getToken ? latest.current.getToken(context) : null),
      onNotification: (n) => {
        if (latest.current.onNotification) latest.current.onNotification(n);
        if (latest.current.toast) latest.current.toast(n.type, n.message, n);
      },
      onMissed: (frame) => {
        if (latest.current.onMissed) latest.current.onMissed(frame);
        else if (latest.current.toast) latest.current.toast(frame.type, frame.message, frame);
      },
      onStateChange: (state, info) => {
        setStatus({ state, info });
        if (latest.current.onStateChange) latest.current.onStateChange(state, info);
      },
    });
    client.start();
    return () => client.stop();
  }, [userId, url]);

  return {
    state: status.state,
    connected: status.state === "open",
    // Set when the client stopped on a refusal retrying cannot fix.
    error: status.state === "failed" ? status.info : null,
  };
}

export default useWebSocketNotifications;
