//! Child processes and ports, for the integration tests (`tests/common`) and the end-to-end
//! benchmark (`benches/edge.rs`, which includes this file by path): keep it to the standard library.

use std::process::Child;
use std::time::{Duration, Instant};

/// A child process, killed and reaped when this is dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on loopback `port`, failing after `within`; how
/// long that took.
pub fn wait_listening(port: u16, what: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < within,
            "{what} did not listen on {port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    started.elapsed()
}
