//! A TCP proxy that can stall a connection without closing it: a subscription that breaks
//! silently.

use super::*;

/// Forwards loopback TCP connections to `target`; any connection can be stalled (the proxy
/// stops reading from the server side, so nothing reaches the client, yet every socket stays
/// open) and resumed. A silently broken link, as a half-dead network path leaves it.
pub struct StallProxy {
    pub port: u16,
    stalled: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>>>,
    /// A command that stalls the connection that sends it ([`StallProxy::stall_on`]).
    trigger: Trigger,
}

type Trigger = std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>;

impl StallProxy {
    pub fn start(target_port: u16) -> Self {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listen");
        let port = listener.local_addr().unwrap().port();
        let stalled: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let registry = stalled.clone();
        let trigger: Trigger = Arc::default();
        let armed = trigger.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                registry.lock().unwrap().push(flag.clone());
                let (client_r, server_w) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let watch = (armed.clone(), flag.clone());
                std::thread::spawn(move || pump(client_r, server_w, None, Some(watch)));
                std::thread::spawn(move || pump(server, client, Some(flag), None));
            }
        });
        StallProxy {
            port,
            stalled,
            trigger,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stalls (or resumes) the server-to-client direction of the `n`th connection accepted.
    pub fn set_stalled(&self, n: usize, stalled: bool) {
        let flags = self.stalled.lock().unwrap();
        let flag = flags
            .get(n)
            .unwrap_or_else(|| panic!("only {} connections so far", flags.len()));
        flag.store(stalled, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on, a connection (open or new) whose client sends `command` is stalled from
    /// there: the command reaches the server, its reply and everything after wait until
    /// [`StallProxy::release_all`].
    pub fn stall_on(&self, command: &[u8]) {
        *self.trigger.lock().unwrap() = Some(command.to_vec());
    }

    /// Waits until `n` connections are stalled.
    pub fn wait_stalled(&self, n: usize) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let stalled = self
                .stalled
                .lock()
                .unwrap()
                .iter()
                .filter(|f| f.load(std::sync::atomic::Ordering::SeqCst))
                .count();
            if stalled >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{stalled} connections stalled, expected {n}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Disarms [`StallProxy::stall_on`] and lets every connection go on.
    pub fn release_all(&self) {
        *self.trigger.lock().unwrap() = None;
        for flag in self.stalled.lock().unwrap().iter() {
            flag.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Copies `from` to `to`. While `stall` is set, nothing is written (what was read waits).
/// `watch`: a trigger command and the flag of the other direction, set when `from` sends it.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    stall: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    watch: Option<(Trigger, std::sync::Arc<std::sync::atomic::AtomicBool>)>,
) {
    let stalled = || {
        stall
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    };
    let mut buf = [0u8; 16 * 1024];
    loop {
        while stalled() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((trigger, other)) = &watch {
            if let Some(command) = trigger.lock().unwrap().as_deref() {
                if buf[..n].windows(command.len()).any(|w| w == command) {
                    other.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        // Read while a stall began: held until it ends.
        while stalled() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
