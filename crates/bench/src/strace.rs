//! Profiling aid (IMAGELESS_BENCH_STRACE=DIR): one warm start each of the unpinned and the
//! pinned environment with flox-runc under `strace -f -b execve -tt`, one trace file per
//! flox-runc call in DIR: each child's execve and the wait4 that reaps it show which child
//! processes a create waits for and how long. (`-b execve` stops following a process once it
//! execs, so strace does not wait for the container's init that runc leaves behind.)
use std::path::Path;
use std::time::Instant;

use imageless_e2e::flox_node::env_pod;
use imageless_e2e::FLOX_EMPTY_IMAGE;

use crate::context::Bench;
use crate::p1_warm_start::{WARM_ENV, WARM_ENV_PINNED};
use crate::stats::ms;
use crate::timing::start_timed;

pub async fn warm_starts(bench: &Bench, dir: &Path) -> anyhow::Result<()> {
    bench.say(&format!("strace of warm flox pod starts into {}", dir.display()));
    std::fs::create_dir_all(dir)?;
    let script = bench.dir.join("flox-runc-strace");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec strace -f -b execve -tt -e trace=execve,clone,clone3,vfork,wait4,exit_group -o '{}/flox-runc.'$$ '{}' \"$@\"\n",
            dir.display(),
            bench.bins.flox_runc().display()
        ),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let runner = bench.runner().await?;
    let opts = bench.run_options();
    bench.set_wrapper(&script)?;
    // flox-runc runs for each runc call only without the shim proxy (containerd 1.6's path).
    bench.set_node_runc(Path::new(crate::context::REAL_RUNC), false)?;
    let mut outcome = Ok(());
    for env in [WARM_ENV, WARM_ENV_PINNED] {
        let yaml = env_pod("strace", env, FLOX_EMPTY_IMAGE, &["hello"]);
        match start_timed(&runner, &yaml, &opts, Instant::now()).await {
            Ok(t) => {
                bench.say(&format!("{env}: running after {:.1} ms under strace", ms(t.running)));
                t.pod.remove().await?;
            }
            Err(e) => outcome = Err(e),
        }
    }
    bench.set_wrapper(&bench.bins.flox_runc())?;
    bench.reset_node_runc()?;
    outcome
}
