//! Loopback ports, unique names and a minimal HTTP probe for readiness checks.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before. Ports come from 20000..45000 so that `port + 10000` (Redis Cluster's bus) is valid too,
/// and both are checked free.
///
/// # Panics
/// If no free port is found after many attempts.
pub fn free_port() -> u16 {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed = handed.get_or_insert_with(HashSet::new);
    let seed = u64::from(std::process::id()) ^ nanos();
    for i in 0..10_000u64 {
        let port = 20_000
            + ((seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(i * 7919))
                % 25_000) as u16;
        if handed.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            handed.insert(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1");
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A name unique within this machine for a while: `prefix` + process id + a counter, lowercase and
/// usable as a database name, a Redis key prefix or a Kubernetes namespace.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id()).replace('_', "-")
}

/// `GET http://{addr}{path}` over HTTP/1.0; returns the status code and the body.
///
/// Only for readiness probes of the parts (the tests use a real HTTP client).
///
/// # Errors
/// Connection, IO or a response that is not HTTP, as text.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:.80}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_not_handed_out_twice() {
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
        assert!(ports.iter().all(|p| (20_000..45_000).contains(p)));
    }

    #[test]
    fn unique_names_differ_and_are_dns_labels() {
        let a = unique_name("t_x");
        let b = unique_name("t_x");
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}

/// A TCP front on a loopback port that sends every new connection to one of its backends, the
/// one last chosen: a Kubernetes Service whose Pod was replaced by another in a different state.
/// [`Switch::route_to`] also cuts every connection made so far, as the old Pod's end would.
/// Stops accepting when dropped.
#[derive(Debug)]
pub struct Switch {
    port: u16,
    state: std::sync::Arc<SwitchState>,
}

#[derive(Debug)]
struct SwitchState {
    backend: AtomicU64,
    stop: std::sync::atomic::AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

impl Switch {
    /// Starts sending connections to `backends[0]` (loopback ports).
    ///
    /// # Panics
    /// When no port can be bound.
    pub fn start(backends: Vec<u16>) -> Switch {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the switch");
        let state = std::sync::Arc::new(SwitchState {
            backend: AtomicU64::new(0),
            stop: std::sync::atomic::AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let shared = std::sync::Arc::clone(&state);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let backend = backends[shared.backend.load(Ordering::Relaxed) as usize];
                let Ok(server) = TcpStream::connect(("127.0.0.1", backend)) else {
                    continue;
                };
                if let Ok(handle) = client.try_clone() {
                    shared
                        .open
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(handle);
                }
                std::thread::spawn(move || splice(client, server));
            }
        });
        Switch { port, state }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends new connections to backend `index` and cuts the open ones.
    pub fn route_to(&self, index: usize) {
        self.state.backend.store(index as u64, Ordering::Relaxed);
        let open = std::mem::take(
            &mut *self
                .state
                .open
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for stream in open {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies both ways until either side closes.
fn splice(client: TcpStream, server: TcpStream) {
    let (Ok(mut client_read), Ok(mut server_read)) = (client.try_clone(), server.try_clone())
    else {
        return;
    };
    let (mut client_write, mut server_write) = (client, server);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut server_write);
        let _ = server_write.shutdown(std::net::Shutdown::Both);
    });
    let _ = std::io::copy(&mut server_read, &mut client_write);
    let _ = client_write.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}
