//! Probes slipped between containerd's shim and flox-runc (through the runtime's
//! `BinaryName` link): the peak RSS of flox-runc during `create`, and the wall time of each
//! runc call with flox-runc's own step timings (see `step_main`).
//!
//! For the measurement the runtime's `BinaryName` link points at a tiny script that runs this
//! benchmark binary as `bench --rss-probe LOG REAL ARGS...`. For a `create` the probe starts the
//! real flox-runc as its child and reads the child's `VmHWM` (peak resident set) from
//! /proc until it exits; flox-runc waits for the real runc create as a child, so the last
//! reading covers its whole run (VmHWM only grows). Other calls exec flox-runc directly.
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub const PROBE_ARG: &str = "--rss-probe";
pub const STEP_PROBE_ARG: &str = "--step-probe";

/// `VmHWM` in kB from a /proc/PID/status text.
pub fn vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Writes the probe script for `real` (logging to `log`) and returns its path; `kind` is
/// PROBE_ARG or STEP_PROBE_ARG.
pub fn write_script(dir: &Path, kind: &str, log: &Path, real: &Path) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    // A private copy: a concurrent cargo build may replace the one in target/ at any moment.
    let me = dir.join("bench-probe");
    if !me.exists() {
        std::fs::copy("/proc/self/exe", &me)?;
    }
    let script = dir.join(format!("flox-runc{kind}"));
    let text = format!("#!/bin/sh\nexec '{}' {kind} '{}' '{}' \"$@\"\n", me.display(), log.display(), real.display());
    std::fs::write(&script, text)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

/// `bench --rss-probe LOG REAL ARGS...`: never returns.
pub fn main(args: &[String]) -> ! {
    let (log, real, rest) = match args {
        [log, real, rest @ ..] => (log, real, rest),
        _ => {
            eprintln!("usage: bench {PROBE_ARG} LOG REAL [ARGS...]");
            std::process::exit(2)
        }
    };
    if !rest.iter().any(|a| a == "create") {
        let err = Command::new(real).args(rest).exec();
        eprintln!("rss probe: cannot exec {real}: {err}");
        std::process::exit(1);
    }
    let mut child = match Command::new(real).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rss probe: cannot run {real}: {e}");
            std::process::exit(1);
        }
    };
    let status_path = format!("/proc/{}/status", child.id());
    let exe_path = format!("/proc/{}/exe", child.id());
    let mut peak_kb = 0u64;
    let code = loop {
        // Only readings of flox-runc itself (not of the probe's copy before exec).
        let is_wrapper = std::fs::read_link(&exe_path).is_ok_and(|p| p.to_string_lossy().ends_with("flox-runc"));
        if is_wrapper {
            if let Some(kb) = std::fs::read_to_string(&status_path).ok().as_deref().and_then(vm_hwm_kb) {
                peak_kb = peak_kb.max(kb);
            }
        }
        match child.try_wait() {
            Ok(Some(s)) => break s.code().unwrap_or(1),
            Ok(None) => std::thread::sleep(Duration::from_micros(200)),
            Err(_) => break 1,
        }
    };
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "create {peak_kb}");
    }
    std::process::exit(code)
}

/// `bench --step-probe LOG REAL ARGS...`: runs REAL with flox-runc's step timings on
/// (`IMAGELESS_LOG=flox_runc::timing=debug`, its stderr appended to LOG) and appends
/// `call <runc command> <wall µs>` to LOG. Never returns.
pub fn step_main(args: &[String]) -> ! {
    let [log, real, rest @ ..] = args else {
        eprintln!("usage: bench {STEP_PROBE_ARG} LOG REAL [ARGS...]");
        std::process::exit(2)
    };
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log);
    let what = rest.iter().find(|a| RUNC_COMMANDS.contains(&a.as_str())).map(String::as_str).unwrap_or("other");
    let mut cmd = Command::new(real);
    cmd.args(rest).env("IMAGELESS_LOG", "flox_runc::timing=debug");
    // Only a create's stderr goes to the log (flox-runc's step timings). Every other call
    // keeps the shim's stderr: the shim reads runc's error text (e.g. "container not running"
    // from a kill racing the container's exit) to tell a harmless failure from a real one.
    if what == "create" {
        if let Some(f) = file.as_ref().ok().and_then(|f| f.try_clone().ok()) {
            cmd.stderr(f);
        }
    }
    let t0 = std::time::Instant::now();
    let code = match cmd.status() {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("step probe: cannot run {real}: {e}");
            1
        }
    };
    let took = t0.elapsed().as_micros();
    if let Ok(mut f) = file {
        let _ = writeln!(f, "call {what} {took}");
    }
    std::process::exit(code)
}

/// runc's subcommands a shim uses (the first of these in argv is the command).
const RUNC_COMMANDS: [&str; 9] = ["create", "start", "state", "delete", "kill", "exec", "run", "update", "events"];

/// Peaks (kB) the probe logged, one per create.
pub fn read_log(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("create ")?.trim().parse().ok())
        .filter(|kb| *kb > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_hwm() {
        let status = "Name:\tflox-runc\nVmPeak:\t  9000 kB\nVmHWM:\t    4321 kB\nVmRSS:\t 4000 kB\n";
        assert_eq!(vm_hwm_kb(status), Some(4321));
        assert_eq!(vm_hwm_kb("Name:\tx\n"), None);
    }

    #[test]
    fn reads_own_hwm_from_proc() {
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(vm_hwm_kb(&own).unwrap() > 0);
    }
}
