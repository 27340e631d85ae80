//! HTTP servers that fail the ways real caches and networks fail, for the failover tests: a
//! closed port, a server that accepts and never answers, one that serves a cache directory but
//! stalls in the middle of every NAR. Plain threads on std sockets: the point is control over
//! each byte, which no real server gives.
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A URL on 127.0.0.1 where nothing listens (the port was bound, then released).
pub fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/cache")
}

/// What a [`BadServer`] does with each request.
#[derive(Clone)]
pub enum Behaviour {
    /// Accept, read the request, never answer (until the server is dropped).
    Silent,
    /// Serve files below this cache directory; NAR files stop after half their bytes and the
    /// connection stays open and silent.
    StallMidNar(PathBuf),
}

pub struct BadServer {
    pub url: String,
    /// Requests read, by path.
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    pub accepted: Arc<AtomicUsize>,
}

impl BadServer {
    pub fn start(behaviour: Behaviour) -> BadServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/cache", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (r, s, o, a) = (requests.clone(), stop.clone(), open.clone(), accepted.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                o.lock().unwrap().push(conn.try_clone().unwrap());
                let (r, b) = (r.clone(), behaviour.clone());
                std::thread::spawn(move || serve(conn, &b, &r));
            }
        });
        BadServer { url, requests, stop, open, accepted }
    }

    pub fn requested(&self, suffix: &str) -> usize {
        self.requests.lock().unwrap().iter().filter(|p| p.ends_with(suffix)).count()
    }
}

impl Drop for BadServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // Wake the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://").trim_end_matches("/cache"));
    }
}

fn serve(conn: TcpStream, behaviour: &Behaviour, requests: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                break;
            }
        }
        requests.lock().unwrap().push(path.clone());
        match behaviour {
            Behaviour::Silent => {
                // Hold the connection open, silent, until the peer or the server closes it.
                let mut buf = [0u8; 1];
                let _ = std::io::Read::read(&mut reader, &mut buf);
                return;
            }
            Behaviour::StallMidNar(dir) => {
                let rel = path.strip_prefix("/cache/").unwrap_or("");
                let file = cache_file(dir, rel);
                let Some(bytes) = file.and_then(|f| std::fs::read(f).ok()) else {
                    let _ = writer.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    continue;
                };
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", bytes.len());
                let _ = writer.write_all(head.as_bytes());
                if rel.starts_with("nar/") {
                    let _ = writer.write_all(&bytes[..bytes.len() / 2]);
                    let _ = writer.flush();
                    std::thread::sleep(Duration::from_secs(600));
                    return;
                }
                let _ = writer.write_all(&bytes);
            }
        }
    }
}

fn cache_file(dir: &Path, rel: &str) -> Option<PathBuf> {
    if rel.is_empty() || rel.split('/').any(|s| s.is_empty() || s == "..") {
        return None;
    }
    Some(dir.join(rel))
}
