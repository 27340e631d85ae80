//! Runs the built `flox-activate` against temporary environment trees, with bash-static as
//! the environment's `bin/bash` where a test needs bash.
mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::{Command, Stdio};

use imageless_core::activation::{ActivationData, Mode};
use support::*;

#[test]
fn run_mode_variables() {
    let test = TestEnv::new(Mode::Run, &[], None);
    let env = test
        .command_env(test.command(&["env", "-0"]).env("FLOX_ENV_PROJECT", "/project").env("FLOX_DISABLE_METRICS", "1"));
    let flox_env = test.env_str();
    assert_eq!(env["FLOX_ENV"], flox_env);
    assert_eq!(env["FLOX_ENV_CACHE"], test.cache_dir.to_str().unwrap());
    assert_eq!(env["FLOX_ENV_DIRS"], flox_env);
    assert_eq!(env["_FLOX_ENV_DIRS_ADD_SBIN"], "empty");
    assert_eq!(env["FLOX_ENV_DESCRIPTION"], DESCRIPTION);
    assert_eq!(env["MANPATH"], format!("{flox_env}/share/man:"));
    assert_eq!(env["INFOPATH"], format!("{flox_env}/share/info:"));
    assert_eq!(env["XDG_DATA_DIRS"], format!("{flox_env}/share"));
    assert_eq!(env["_FLOX_ACTIVE_ENVIRONMENTS"], "[]");
    assert_eq!(env["FLOX_PROMPT_ENVIRONMENTS"], "floxenv");
    assert_eq!(env["FLOX_DISABLE_METRICS"], "1");
    assert_eq!(env["HOME"], "/root");
    assert!(!env.contains_key("FLOX_ENV_PROJECT"));
    for dev_only in ["CPATH", "LIBRARY_PATH", "PKG_CONFIG_PATH", "ACLOCAL_PATH"] {
        assert!(!env.contains_key(dev_only), "{dev_only} is dev-only");
    }
}

#[test]
fn image_path_is_kept_after_the_environment_path() {
    let test = TestEnv::new(Mode::Run, &[], None);
    let env = test.command_env(&mut test.command(&["env", "-0"]));
    assert_eq!(env["PATH"], format!("{}/bin:{}:/usr/bin:/bin", test.env_str(), test.image_bin.display()));

    // A program in both: the environment's wins; one only in the image is still found.
    write_executable(&test.env_dir.join("bin/tool"), "#!/bin/sh\necho from-env\n");
    write_executable(&test.image_bin.join("tool"), "#!/bin/sh\necho from-image\n");
    write_executable(&test.image_bin.join("image-only"), "#!/bin/sh\necho image-only\n");
    assert_eq!(test.run(&["tool"]).stdout, b"from-env\n");
    assert_eq!(test.run(&["image-only"]).stdout, b"image-only\n");
}

#[test]
fn default_path_when_the_image_has_none() {
    let test = TestEnv::new(Mode::Run, &[], None);
    let env = test.command_env(test.command(&["/usr/bin/env", "-0"]).env_remove("PATH"));
    assert_eq!(
        env["PATH"],
        format!("{}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", test.env_str())
    );
}

#[test]
fn dev_mode_variables() {
    let test = TestEnv::new(Mode::Dev, &[], None);
    // A python3 laid out as nixpkgs does (python3 -> python3.11) and a java.
    fs::write(test.env_dir.join("bin/python3.11"), "").unwrap();
    fs::set_permissions(test.env_dir.join("bin/python3.11"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("python3.11", test.env_dir.join("bin/python3")).unwrap();
    write_executable(&test.env_dir.join("bin/java"), "");
    let env = test.command_env(test.command(&["env", "-0"]).env("CPATH", "/usr/include"));
    let flox_env = test.env_str();
    assert_eq!(env["CPATH"], format!("{flox_env}/include:/usr/include"));
    assert_eq!(env["LIBRARY_PATH"], format!("{flox_env}/lib"));
    assert_eq!(env["PKG_CONFIG_PATH"], format!("{flox_env}/lib/pkgconfig:{flox_env}/share/pkgconfig"));
    assert_eq!(env["ACLOCAL_PATH"], format!("{flox_env}/share/aclocal"));
    assert_eq!(env["PYTHONPATH"], format!("{flox_env}/lib/python3.11/site-packages"));
    assert_eq!(env["JAVA_HOME"], flox_env);
    assert!(!env.contains_key("CMAKE_PREFIX_PATH"));
}

#[test]
fn literal_vars_are_set_without_bash() {
    // No bash anywhere on PATH: literal values must not need one.
    let test = TestEnv::new(Mode::Run, &[("GREETING", "hello world"), ("QUOTED", "it's 'fine'")], None);
    let env = test.command_env(test.command(&["/usr/bin/env", "-0"]).env("PATH", "/nonexistent"));
    assert_eq!(env["GREETING"], "hello world");
    assert_eq!(env["QUOTED"], "it's 'fine'");
}

#[test]
fn vars_expand_like_flox_envrc() {
    let test = TestEnv::new(
        Mode::Run,
        &[("GREETING", "hello"), ("MESSAGE", "${GREETING}!"), ("WHERE", "$HOME/x"), ("SUB", "$(echo sub)")],
        None,
    )
    .with_bash();
    let env = test.command_env(&mut test.command(&["env", "-0"]));
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(env["MESSAGE"], "hello!");
    assert_eq!(env["WHERE"], "/root/x");
    assert_eq!(env["SUB"], "sub");
    // bash's own bookkeeping does not leak into the command.
    assert!(!env.contains_key("SHLVL"));
    assert!(!env.contains_key("_"));
}

#[test]
fn vars_needing_bash_without_bash_fail_clearly() {
    let test = TestEnv::new(Mode::Run, &[("PLAIN", "x"), ("MESSAGE", "${GREETING}!")], None);
    let output = test.command(&["/usr/bin/true"]).env("PATH", "/nonexistent").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("[vars] MESSAGE of owner/name needs bash"), "{message}");
    assert!(message.contains("add bash"), "{message}");
}

#[test]
fn hook_exports_are_visible_and_its_stdout_goes_to_stderr() {
    let hook = "echo hook-says-hi\nexport FROM_HOOK=\"$GREETING-from-hook\"\nunset UNSET_ME\nfalse\n";
    let test = TestEnv::new(Mode::Run, &[("GREETING", "hello")], Some(hook)).with_bash();
    let output = test.command(&["env", "-0"]).env("UNSET_ME", "x").output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let env = parse_env0(&output.stdout);
    assert_eq!(env["FROM_HOOK"], "hello-from-hook");
    assert!(!env.contains_key("UNSET_ME"));
    assert!(!String::from_utf8_lossy(&output.stdout).contains("hook-says-hi"));
    assert!(stderr(&output).contains("hook-says-hi"));
    // The hook text was written to the cache only while bash ran.
    assert_eq!(fs::read_dir(&test.cache_dir).unwrap().count(), 0);
}

#[test]
fn hook_can_return_early_and_read_stdin() {
    let hook = "read -r line\nexport LINE=\"$line\"\nreturn 0\nexport NOT_REACHED=1\n";
    let test = TestEnv::new(Mode::Run, &[], Some(hook)).with_bash();
    let mut child = test.command(&["env", "-0"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"from-stdin\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let env = parse_env0(&output.stdout);
    assert_eq!(env["LINE"], "from-stdin");
    assert!(!env.contains_key("NOT_REACHED"));
}

#[test]
fn hook_exit_fails_activation() {
    let test = TestEnv::new(Mode::Run, &[], Some("echo about to fail\nexit 3\n")).with_bash();
    let output = test.run(&["echo", "command-ran"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("flox: hook.on-activate of owner/name failed (exit 3)"), "{}", stderr(&output));
    assert!(output.stdout.is_empty());

    let test = TestEnv::new(Mode::Run, &[], Some("exit 0\n")).with_bash();
    let output = test.run(&["echo", "command-ran"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("failed (exit 0)"), "{}", stderr(&output));
}

#[test]
fn hook_without_bash_fails_clearly() {
    let test = TestEnv::new(Mode::Run, &[], Some("export A=1\n"));
    let output = test.command(&["/usr/bin/true"]).env("PATH", "/nonexistent").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("hook.on-activate of owner/name needs bash"), "{}", stderr(&output));
}

#[test]
fn dev_plugin_profile_scripts_run_after_vars() {
    let test = TestEnv::new(Mode::Dev, &[("FROM_VARS", "vars"), ("OVERRIDDEN", "vars")], None).with_bash();
    fs::create_dir_all(test.env_dir.join("etc/profile.d")).unwrap();
    fs::write(test.env_dir.join("etc/profile.d/9000_plugin.sh"), "export OVERRIDDEN=\"plugin saw $FROM_VARS\"\n")
        .unwrap();
    // An interpreter script of the same directory is not sourced (its effects are built in).
    fs::write(test.env_dir.join("etc/profile.d/0100_common-run-mode-paths.sh"), "export BUILTIN_RAN=1\n").unwrap();
    let env = test.command_env(&mut test.command(&["env", "-0"]));
    assert_eq!(env["OVERRIDDEN"], "plugin saw vars");
    assert!(!env.contains_key("BUILTIN_RAN"));
}

#[test]
fn command_not_found_exits_127() {
    let test = TestEnv::new(Mode::Run, &[], None);
    let output = test.run(&["no-such-command-anywhere", "arg"]);
    assert_eq!(output.status.code(), Some(127));
    assert_eq!(stderr(&output), "no-such-command-anywhere: command not found in environment owner/name\n");

    let output = test.run(&["./missing/path"]);
    assert_eq!(output.status.code(), Some(127));
}

#[test]
fn non_executable_command_exits_126() {
    let test = TestEnv::new(Mode::Run, &[], None);
    fs::write(test.env_dir.join("bin/data"), "").unwrap();
    let output = test.run(&["data"]);
    assert_eq!(output.status.code(), Some(126));
    assert!(stderr(&output).contains("not executable"), "{}", stderr(&output));
}

#[test]
fn argv_is_passed_verbatim_without_a_shell() {
    let test = TestEnv::new(Mode::Run, &[], None).with_bash();
    let output = test.run(&["bash", "-c", "printf '%s|' \"$0\" \"$@\"", "zero", "a b", "$HOME", "*", ""]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "zero|a b|$HOME|*||");
}

#[test]
fn command_exit_status_and_pid_are_the_activators() {
    let test = TestEnv::new(Mode::Run, &[], Some("true\n")).with_bash();
    // exec, not spawn: the command's status is the process's status.
    let output = test.run(&["bash", "-c", "exit 42"]);
    assert_eq!(output.status.code(), Some(42));

    let child = test.command(&["bash", "-c", "echo $$"]).stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), pid.to_string());
}

#[test]
fn no_command_starts_a_shell() {
    let test = TestEnv::new(Mode::Run, &[], None).with_bash();
    let mut child = test.command(&[]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"echo \"shell in $FLOX_ENV\"\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), format!("shell in {}\n", test.env_str()));
}

#[test]
fn bad_activation_data_is_reported() {
    let test = TestEnv::new(Mode::Run, &[], None);
    let data = test.env_dir.join("activate.d/imageless.json");
    let mut value: serde_json::Value = serde_json::from_slice(&fs::read(&data).unwrap()).unwrap();
    value["version"] = 99.into();
    fs::write(&data, value.to_string()).unwrap();
    let output = test.run(&["true"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("has version 99, this activator reads version 1"), "{}", stderr(&output));

    fs::remove_file(&data).unwrap();
    let output = test.run(&["true"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("cannot read the activation data"), "{}", stderr(&output));
}

#[test]
fn invalid_var_names_are_refused() {
    let test = TestEnv::new(Mode::Run, &[("BAD-NAME", "x")], None);
    let output = test.run(&["true"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("\"BAD-NAME\""), "{}", stderr(&output));
}

#[test]
fn command_starts_with_default_sigpipe() {
    // Rust ignores SIGPIPE in its own process; the command must get the default back, or
    // `cmd | head` style pipelines would see EPIPE errors instead of quietly ending.
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let test = TestEnv::new(Mode::Run, &[], None);
    let mut child = test.command(&["yes"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 2];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(13), "{status:?}");
}

#[test]
fn interactive_shell_gets_profile_scripts() {
    let mut test = TestEnv::new(Mode::Run, &[], None).with_bash();
    let data_path = test.env_dir.join("activate.d/imageless.json");
    let mut data: ActivationData = serde_json::from_slice(&fs::read(&data_path).unwrap()).unwrap();
    data.profile.common = Some("export PROFILE_MARK=common".into());
    data.profile.bash = Some("PROFILE_MARK=\"$PROFILE_MARK+bash\"".into());
    fs::write(&data_path, serde_json::to_vec(&data).unwrap()).unwrap();
    test.cache_dir = test.cache_dir.canonicalize().unwrap();

    // `script` gives bash a terminal, so it is interactive and reads the rc file.
    let activator = format!("{ACTIVATOR} --env {} --cache {} --", test.env_dir.display(), test.cache_dir.display());
    let mut child = Command::new("script")
        .args(["-qec", &activator, "/dev/null"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("SHELL", "/bin/sh")
        .env("HOME", test.cache_dir.as_os_str())
        .env("FLOX_ENV_DESCRIPTION", DESCRIPTION)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"echo \"mark=$PROFILE_MARK=\"; exit\n").unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("mark=common+bash="), "{stdout}");
}

#[test]
fn background_processes_started_by_the_hook_do_not_hold_activation() {
    let hook = "( sleep 5; true ) &\nexport STARTED=1\n";
    let test = TestEnv::new(Mode::Run, &[], Some(hook)).with_bash();
    // The subshell keeps stderr open (as a daemon would keep the container log); stderr goes
    // to a file so only the activator and the command are waited for.
    let stderr_file = tempfile::tempfile().unwrap();
    let started = std::time::Instant::now();
    let output = test.command(&["/usr/bin/env", "-0"]).stderr(stderr_file).output().unwrap();
    assert!(output.status.success());
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(parse_env0(&output.stdout)["STARTED"], "1");
}
