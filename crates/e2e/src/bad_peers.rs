//! Network peers that fail the way outages do, for the failover tests: a port where nothing
//! listens (connection refused) and a server that accepts and never answers.
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// A `http://127.0.0.1:PORT/cache` URL where nothing listens (the port was bound, then freed).
pub fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let port = listener.local_addr().expect("a bound address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}/cache")
}

/// Accepts connections and never answers, until dropped.
pub struct Silent {
    /// `http://127.0.0.1:PORT/cache`.
    pub url: String,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl Silent {
    pub fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let url = format!("http://{}/cache", listener.local_addr().expect("a bound address"));
        let (stop, accepted) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (s, a) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                a.fetch_add(1, Ordering::SeqCst);
                held.push(conn);
            }
        });
        Silent { url, stop, accepted }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://").trim_end_matches("/cache"));
    }
}
