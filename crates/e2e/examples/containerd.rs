//! Starts a private harness containerd and keeps it until Enter (or EOF) on stdin, then tears it
//! down. For trying `imageless pod` by hand:
//!   cargo run -p imageless-e2e --example containerd -- 2.1.9
//! prints the `--cri` endpoint, the pod state root and the matching `ctr`.
use imageless_e2e::{Containerd, ContainerdOptions, ContainerdVersion};

fn main() -> anyhow::Result<()> {
    let wanted = std::env::args().nth(1).unwrap_or_else(|| "1.6.20".into());
    let version = ContainerdVersion::ALL
        .into_iter()
        .find(|v| v.as_str() == wanted)
        .ok_or_else(|| anyhow::anyhow!("version {wanted:?} is not accepted; use 1.6.20, 1.7.24 or 2.1.9"))?;
    version.ensure_available()?;
    let ctrd = Containerd::start(version, ContainerdOptions::default())?;
    println!("containerd {version} pid {}", ctrd.pid());
    println!("export IMAGELESS_CRI={}", ctrd.endpoint());
    println!("export IMAGELESS_POD_STATE_ROOT={}", ctrd.pod_state_root().display());
    println!("ctr: {} -n k8s.io -a {}", version.ctr().display(), ctrd.socket().display());
    println!("config: {}  log: {}", ctrd.config_path().display(), ctrd.log_path().display());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    ctrd.stop()
}
