//! A TCP proxy that can stall a connection without closing it: a subscription that breaks
//! silently.

use super::*;

/// Forwards loopback TCP connections to `target`; any connection can be stalled (the proxy
/// stops reading from the server side, so nothing reaches the client, yet every socket stays
/// open) and resumed. A silently broken link, as a half-dead network path leaves it.
pub struct StallProxy {
    pub port: u16,
    stalled: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>>>,
}

impl StallProxy {
    pub fn start(target_port: u16) -> Self {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listen");
        let port = listener.local_addr().unwrap().port();
        let stalled: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let registry = stalled.clone();
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
                std::thread::spawn(move || pump(client_r, server_w, None));
                std::thread::spawn(move || pump(server, client, Some(flag)));
            }
        });
        StallProxy { port, stalled }
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
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    stall: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        while stall
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
