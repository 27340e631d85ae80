//! nginx (Debian's package) serving a directory of files at `/cache/`, as a distribution's
//! binary-cache mirror or a team's plain static cache would: sendfile, keep-alive, a worker
//! per core. The benchmark's baseline for the hub (P7) and the good and corrupt caches of the
//! failover tests. Stopped (SIGQUIT, graceful) on drop.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct Nginx {
    child: Child,
    /// `http://127.0.0.1:PORT`; the files are under `<url>/cache/`.
    pub url: String,
    prefix: PathBuf,
}

impl Nginx {
    /// Serves `root` at `/cache/`; nginx's own files (config, logs, pid) live in `work`/nginx.
    pub fn start(work: &Path, root: &Path) -> anyhow::Result<Nginx> {
        let prefix = work.join("nginx");
        std::fs::create_dir_all(prefix.join("logs"))?;
        let port = crate::flox_node::free_port();
        let conf = format!(
            "worker_processes auto;\nuser root;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {p}/logs/access.log;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
             \x20 default_type application/octet-stream;\n  types {{ text/x-nix-narinfo narinfo; }}\n\
             \x20 server {{\n    listen 127.0.0.1:{port};\n    location /cache/ {{ alias {root}/; }}\n  }}\n}}\n",
            p = prefix.display(),
            root = root.display(),
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (Debian's `nginx` package; scripts/setup-machine.sh installs it)")?;
        let mut nginx = Nginx { child, url: format!("http://127.0.0.1:{port}"), prefix: prefix.clone() };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = nginx.child.try_wait()? {
                let log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
                bail!("nginx exited ({status}): {log}");
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx.url = format!("http://127.0.0.1:{port}");
        Ok(nginx)
    }

    /// The substituter URL of the served directory.
    pub fn cache_url(&self) -> String {
        format!("{}/cache", self.url)
    }

    /// The access log so far (combined format: `"GET /cache/… HTTP/1.1" STATUS …`).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("logs/access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        crate::signal(self.child.id(), rustix::process::Signal::QUIT);
        let _ = self.child.wait();
    }
}
