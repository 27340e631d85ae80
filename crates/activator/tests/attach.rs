//! Exec processes attach to the main process's activation (`--attach`): they get the hook's
//! exports and `[vars]` without running the hook, compose PATH-like variables with their own
//! environment, wait for a main process that is still activating, and activate anew when
//! there is nothing to attach to.
mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use imageless_core::activation::Mode;
use support::*;

/// Appends a line to `$HOOK_COUNT` per run, exports a variable, puts a directory in front of
/// PATH and prints to stdout (which goes to stderr).
const COUNTING_HOOK: &str = r#"echo ran >> "$HOOK_COUNT"
export FROM_HOOK="$GREETING-from-hook"
export PATH="/hook/bin:$PATH"
echo hook-stdout-line
"#;

fn hook_runs(test: &TestEnv) -> usize {
    fs::read_to_string(test.scratch.join("count")).map(|text| text.lines().count()).unwrap_or(0)
}

fn counting_env(hook: &str) -> TestEnv {
    TestEnv::new(Mode::Run, &[("GREETING", "hello"), ("LOUD", "${GREETING}!")], Some(hook)).with_bash()
}

fn main_process(test: &TestEnv) {
    let output = test.command(&["true"]).env("HOOK_COUNT", test.scratch.join("count")).output().unwrap();
    assert!(output.status.success(), "main: {}", stderr(&output));
}

#[test]
fn exec_gets_the_recorded_environment_without_running_the_hook() {
    let test = counting_env(COUNTING_HOOK);
    main_process(&test);
    assert_eq!(hook_runs(&test), 1);
    let record = test.state_dir.join("environment");
    assert_eq!(fs::metadata(&record).unwrap().mode() & 0o777, 0o600, "record is private");

    for _ in 0..20 {
        let output =
            test.attach_command(&["env", "-0"]).env("HOOK_COUNT", test.scratch.join("count")).output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(!stderr(&output).contains("hook-stdout-line"), "hook ran in the exec: {}", stderr(&output));
        let env = parse_env0(&output.stdout);
        assert_eq!(env["FROM_HOOK"], "hello-from-hook");
        assert_eq!(env["GREETING"], "hello");
        assert_eq!(env["LOUD"], "hello!");
        assert_eq!(env["FLOX_ENV"], test.env_str());
        assert_eq!(env["PATH"], format!("/hook/bin:{}/bin:{}:/usr/bin:/bin", test.env_str(), test.image_bin.display()));
    }
    assert_eq!(hook_runs(&test), 1, "20 execs ran the hook 0 times");
}

#[test]
fn exec_own_environment_composes_as_flox_attach_does() {
    let test = counting_env(COUNTING_HOOK);
    main_process(&test);
    let env = test.command_env(
        test.attach_command(&["env", "-0"])
            .env("PATH", "/custom/bin:/usr/bin:/bin")
            .env("MINE", "exec-only")
            .env("FROM_HOOK", "exec-value")
            .env("GREETING", "exec-greeting"),
    );
    // PATH: flox's entries and the hook's prepend in front of the exec's own PATH.
    assert_eq!(env["PATH"], format!("/hook/bin:{}/bin:/custom/bin:/usr/bin:/bin", test.env_str()));
    // Untouched by the activation: the exec's own value.
    assert_eq!(env["MINE"], "exec-only");
    // Set by the hook or [vars]: Flox's replay assigns them over the exec's values.
    assert_eq!(env["FROM_HOOK"], "hello-from-hook");
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(hook_runs(&test), 1);
}

#[test]
fn exec_waits_for_a_main_process_still_in_its_hook() {
    let test = counting_env(&format!("sleep 1\n{COUNTING_HOOK}"));
    let mut main =
        test.command(&["true"]).env("HOOK_COUNT", test.scratch.join("count")).stderr(Stdio::null()).spawn().unwrap();
    // The main process marks its start before it reads anything.
    let began = Instant::now();
    while !test.state_dir.join("starting").exists() {
        assert!(began.elapsed() < Duration::from_secs(5), "no starting marker");
        std::thread::sleep(Duration::from_millis(5));
    }
    let env = test.command_env(test.attach_command(&["env", "-0"]).env("HOOK_COUNT", test.scratch.join("count")));
    assert!(main.wait().unwrap().success());
    assert_eq!(env["FROM_HOOK"], "hello-from-hook");
    assert_eq!(hook_runs(&test), 1, "the exec waited instead of running the hook");
}

#[test]
fn nothing_to_attach_to_activates_anew() {
    // No state directory at all (a container from before attach): a fresh activation at once.
    let test = counting_env(COUNTING_HOOK);
    fs::remove_dir(&test.state_dir).unwrap();
    let began = Instant::now();
    let env = test.command_env(test.attach_command(&["env", "-0"]).env("HOOK_COUNT", test.scratch.join("count")));
    assert!(began.elapsed() < Duration::from_secs(1));
    assert_eq!(env["FROM_HOOK"], "hello-from-hook");
    assert_eq!(hook_runs(&test), 1);

    // A main process that died while activating (its PID is gone): activate anew at once.
    let test = counting_env(COUNTING_HOOK);
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    fs::write(test.state_dir.join("starting"), gone_pid.to_string()).unwrap();
    let began = Instant::now();
    let env = test.command_env(test.attach_command(&["env", "-0"]).env("HOOK_COUNT", test.scratch.join("count")));
    assert!(began.elapsed() < Duration::from_secs(1));
    assert_eq!(env["FROM_HOOK"], "hello-from-hook");
    assert_eq!(hook_runs(&test), 1);

    // An empty state directory: the exec gives the main process a grace period to mark its
    // start, then activates anew.
    let test = counting_env(COUNTING_HOOK);
    let began = Instant::now();
    let env = test.command_env(test.attach_command(&["env", "-0"]).env("HOOK_COUNT", test.scratch.join("count")));
    assert!(began.elapsed() >= Duration::from_secs(2), "waited for the marker");
    assert_eq!(env["FROM_HOOK"], "hello-from-hook");
    assert_eq!(hook_runs(&test), 1);
}

#[test]
fn a_record_of_another_user_is_not_trusted() {
    let test = counting_env(COUNTING_HOOK);
    main_process(&test);
    // What an unprivileged workload could leave for a root exec.
    let record = test.state_dir.join("environment");
    let evil = b"flox-activate attach 1\nset\0LD_PRELOAD\0/tmp/evil.so\0";
    fs::write(&record, evil).unwrap();
    chown(&record, 1000);
    let output = test.attach_command(&["env", "-0"]).env("HOOK_COUNT", test.scratch.join("count")).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let env = parse_env0(&output.stdout);
    assert!(!env.contains_key("LD_PRELOAD"));
    assert_eq!(env["FROM_HOOK"], "hello-from-hook", "activated anew");
    assert_eq!(hook_runs(&test), 2);
    assert!(stderr(&output).contains("belongs to uid 1000"), "{}", stderr(&output));
}

#[test]
fn hook_less_environment_attaches_without_waiting() {
    // Nothing runs at start: the exec computes the same environment itself, even before the
    // main process recorded anything.
    let test = TestEnv::new(Mode::Run, &[("GREETING", "hello")], None);
    let began = Instant::now();
    let env = test.command_env(&mut test.attach_command(&["env", "-0"]));
    assert!(began.elapsed() < Duration::from_secs(1));
    assert_eq!(env["GREETING"], "hello");
    assert!(!test.state_dir.join("environment").exists(), "an exec records nothing");
    // The main process records its (hook-less) activation too.
    let output = test.command(&["true"]).output().unwrap();
    assert!(output.status.success());
    assert!(test.state_dir.join("environment").exists());
}

#[test]
fn a_new_container_starts_fresh() {
    // A restarted container gets a new (empty) state tmpfs: its main process runs the hook.
    let test = counting_env(COUNTING_HOOK);
    main_process(&test);
    for entry in fs::read_dir(&test.state_dir).unwrap() {
        fs::remove_file(entry.unwrap().path()).unwrap();
    }
    main_process(&test);
    assert_eq!(hook_runs(&test), 2);
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

#[test]
fn a_record_that_cannot_be_written_does_not_leave_execs_waiting() {
    let test = counting_env(COUNTING_HOOK);
    // Something in the record's place that rename cannot replace.
    fs::create_dir(test.state_dir.join("environment")).unwrap();
    let output = test.command(&["true"]).env("HOOK_COUNT", test.scratch.join("count")).output().unwrap();
    assert!(output.status.success(), "the workload still runs: {}", stderr(&output));
    assert!(stderr(&output).contains("exec processes will run hook.on-activate again"), "{}", stderr(&output));
    assert!(!test.state_dir.join("starting").exists(), "no marker left for execs to wait on");
    let began = Instant::now();
    let env = test.command_env(test.attach_command(&["env", "-0"]).env("HOOK_COUNT", test.scratch.join("count")));
    assert!(began.elapsed() < Duration::from_secs(1));
    assert_eq!(env["FROM_HOOK"], "hello-from-hook");
    assert_eq!(hook_runs(&test), 2, "the exec activated anew");
}
