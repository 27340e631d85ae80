//! End to end, on containerd 1.7.24 and 2.1.9 over real CRI: exec processes attach to the
//! container's activation as a second `flox activate` in the same container does — the hook
//! runs once (in the main process), execs see its exports and `[vars]` without running it,
//! an exec's own environment composes with the recorded one, a slow hook does not make
//! liveness-style probes time out, and a TTY exec prints what a plain runc container prints.
//!
//! Uses the world's `flox/attach` environment (its hook counts its runs in
//! `$FLOX_ENV_CACHE/hook-runs` and sleeps `$HOOK_SLEEP`) on the busybox image.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imageless_e2e::flox_node::{self as support, FloxNode};
use imageless_e2e::{ContainerdVersion, ExecStreams, RunningPod};

const BUSYBOX: &str = "busybox:local";

fn attach_pod(name: &str, env: &str, hook_sleep: Option<&str>) -> String {
    let env_block = hook_sleep.map(|s| format!("    env: [{{name: HOOK_SLEEP, value: {s:?}}}]\n")).unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  annotations:
    flox.dev/environment: "{env}"
    flox.dev/skip-containers: "plain"
spec:
  runtimeClassName: flox
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "echo main-started; exec sleep 300"]
{env_block}  - name: plain
    image: {BUSYBOX}
    command: ["sleep", "300"]
"#
    )
}

async fn exec(pod: &RunningPod, script: &str, timeout: Duration) -> (i64, String, String) {
    let out = pod
        .exec_sync(Some("app"), vec!["sh".into(), "-c".into(), script.into()], Some(timeout))
        .await
        .unwrap_or_else(|e| panic!("exec {script:?}: {e}"));
    (
        out.exit_code as i64,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn hook_runs(pod: &RunningPod) -> usize {
    let (code, out, err) = exec(pod, "cat /run/flox/cache/hook-runs", Duration::from_secs(20)).await;
    assert_eq!(code, 0, "{err}");
    out.lines().count()
}

/// `ctr task exec` in a container. With `tty`, ctr gets a terminal (it runs under `script`)
/// whose input stays open until the command's output has ended, as a person's terminal does,
/// and ctr's own resize-after-exit complaint is dropped. Returns stdout bytes.
fn ctr_exec(node: &FloxNode, pod: &RunningPod, container: &str, tty: bool, command: &[&str]) -> Vec<u8> {
    let version = node.containerd.version();
    let id = &pod.container(Some(container)).unwrap().id;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let mut args: Vec<String> = vec![
        version.ctr().display().to_string(),
        "-n".into(),
        "k8s.io".into(),
        "-a".into(),
        node.containerd.socket().display().to_string(),
        "task".into(),
        "exec".into(),
        "--exec-id".into(),
        format!("e2e-{nanos}"),
    ];
    if tty {
        args.push("-t".into());
    }
    args.push(id.clone());
    args.extend(command.iter().map(|s| s.to_string()));
    if !tty {
        let output = Command::new(&args[0]).args(&args[1..]).output().unwrap();
        assert!(output.status.success(), "ctr exec {command:?}: {}", String::from_utf8_lossy(&output.stderr));
        return output.stdout;
    }
    let quoted: Vec<String> = args.iter().map(|a| format!("'{}'", a.replace('\'', r"'\''"))).collect();
    let mut child = Command::new("script")
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input = child.stdin.take();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    drop(input);
    assert!(child.wait().unwrap().success(), "ctr exec -t {command:?}");
    let text = String::from_utf8_lossy(&out);
    text.split_inclusive('\n').filter(|line| !line.contains("resize pty")).collect::<String>().into_bytes()
}

/// `runc exec --process F` through flox-runc, as the runc shim calls it, with a process of our
/// own making (its env is the exec's own).
fn flox_runc_exec(node: &FloxNode, pod: &RunningPod, env: &[&str], args: &[&str]) -> Vec<u8> {
    let id = &pod.container(Some("app")).unwrap().id;
    let runc_root = ["/run/containerd/runc/k8s.io"]
        .into_iter()
        .find(|root| std::path::Path::new(root).join(id).exists())
        .unwrap_or_else(|| panic!("runc state of {id} not found"));
    let process = serde_json::json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": env,
        "cwd": "/",
    });
    let file = node.dir.path().join(format!("exec-process-{id}.json"));
    std::fs::write(&file, serde_json::to_vec(&process).unwrap()).unwrap();
    let output = Command::new(support::bin_dir().join("flox-runc"))
        .env("IMAGELESS_CONFIG", &node.config_path)
        .args(["--root", runc_root, "exec", "--process"])
        .arg(&file)
        .arg(id)
        .output()
        .unwrap();
    assert!(output.status.success(), "flox-runc exec: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

async fn hook_runs_once_and_execs_attach(node: &FloxNode) {
    let pod = node.run(&attach_pod("attach", "flox/attach", None), &[]).await.expect("attach pod starts");
    assert_eq!(hook_runs(&pod).await, 1, "the main process ran the hook");
    for i in 0..20 {
        let (code, out, err) =
            exec(&pod, "echo H=$HOOK_EXPORT V=$ATTACH_VAR G=$GREETING; echo P=$PATH", Duration::from_secs(20)).await;
        assert_eq!(code, 0, "exec {i}: {err}");
        assert!(
            out.contains("H=from-hook-hi V=from-vars G=hi\n"),
            "exec {i} sees the hook's exports and [vars]: {out}"
        );
        assert!(out.contains("P=/hook/bin:/run/flox/env/bin:"), "exec {i}: hook's PATH prepend: {out}");
        assert!(!err.contains("hook: ran"), "exec {i} ran the hook: {err}");
    }
    assert_eq!(hook_runs(&pod).await, 1, "20 execs ran the hook 0 times");
    let logs: String = pod.logs(Some("app")).unwrap().into_iter().map(|l| l.text + "\n").collect();
    assert_eq!(logs.matches("hook: ran").count(), 1, "{logs}");

    // An exec's own environment (`docker exec -e` style; neither CRI nor ctr can set one, so
    // the exec process file goes to flox-runc as containerd's shim hands it over): untouched
    // variables keep the exec's value, PATH composes (flox's entries, the hook's prepend, then
    // the exec's PATH), and what the hook or [vars] set is assigned over it, as Flox's attach
    // replays it.
    let out = flox_runc_exec(
        node,
        &pod,
        &["PATH=/custom/bin:/bin", "MINE=mine", "HOOK_EXPORT=exec", "GREETING=exec"],
        &["sh", "-c", "echo P=$PATH M=$MINE H=$HOOK_EXPORT G=$GREETING"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        "P=/hook/bin:/run/flox/env/bin:/custom/bin:/bin M=mine H=from-hook-hi G=hi"
    );
    assert_eq!(hook_runs(&pod).await, 1);
    pod.remove().await.unwrap();

    // A new container (here: a new pod) starts fresh: its own hook run.
    let pod = node.run(&attach_pod("attach-again", "flox/attach", None), &[]).await.unwrap();
    assert_eq!(hook_runs(&pod).await, 1);
    pod.remove().await.unwrap();
}

async fn slow_hook_and_liveness_probes(node: &FloxNode) {
    let pod = node.run(&attach_pod("slow", "flox/attach", Some("1.5")), &[]).await.expect("slow-hook pod starts");
    // An exec during the main process's hook waits for it instead of running the hook again.
    let began = Instant::now();
    let (code, out, err) = exec(&pod, "echo H=$HOOK_EXPORT", Duration::from_secs(20)).await;
    assert_eq!((code, out.trim()), (0, "H=from-hook-hi"), "{err}");
    eprintln!("exec during the 1.5 s hook returned after {:?}", began.elapsed());
    assert_eq!(hook_runs(&pod).await, 1);
    // Liveness-style probes: ExecSync with a 1 s timeout.
    let mut durations = Vec::new();
    for i in 0..10 {
        let began = Instant::now();
        let out = pod.exec_sync(Some("app"), vec!["true".into()], Some(Duration::from_secs(1))).await;
        durations.push(began.elapsed());
        let out = out.unwrap_or_else(|e| panic!("probe {i}: {e}"));
        assert_eq!(out.exit_code, 0, "probe {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    eprintln!("10/10 liveness-style probes succeeded; durations {durations:?}");
    assert_eq!(hook_runs(&pod).await, 1);
    pod.remove().await.unwrap();
}

/// The stray `^@` seen before a flox TTY exec's output is the terminal's echo of a NUL byte
/// that arrives on the exec's TTY input from the client side once the client's own input is at
/// end of file (seen with `ctr task exec -t` under `script` with stdin at EOF). A plain runc
/// container shows it just the same when its command is still running at that moment (e.g.
/// `sleep 0.3; echo slow`); short commands in a flox container showed it more often only because
/// they ran a hook (tens of ms) before the command. With attach there is no hook run on exec,
/// and with the client's input open, as at a person's terminal, neither prints a NUL.
async fn tty_exec_prints_what_plain_runc_prints(node: &FloxNode) {
    let pod = node.run(&attach_pod("tty", "flox/attach", None), &[]).await.expect("tty pod starts");
    assert_eq!(hook_runs(&pod).await, 1);
    for command in [&["echo", "hello-tty"][..], &["sh", "-c", "echo in-sh"], &["sh", "-c", "sleep 0.3; echo slow"]] {
        let plain = ctr_exec(node, &pod, "plain", true, command);
        let flox = ctr_exec(node, &pod, "app", true, command);
        assert!(!flox.contains(&0) && !flox.starts_with(b"^@"), "flox TTY exec {command:?}: {flox:?}");
        assert_eq!(
            String::from_utf8_lossy(&flox),
            String::from_utf8_lossy(&plain),
            "flox TTY exec {command:?} prints what plain runc prints"
        );
    }
    let out = ctr_exec(node, &pod, "app", true, &["sh", "-c", "echo H=$HOOK_EXPORT"]);
    assert_eq!(String::from_utf8_lossy(&out), "H=from-hook-hi\r\r\n");
    assert_eq!(hook_runs(&pod).await, 1, "TTY execs attach too");
    streamed_execs(&pod).await;
    pod.remove().await.unwrap();
}

/// CRI `Exec` with streams (what `kubectl exec [-i] [-t]` does), over the runtime's streaming
/// server: stdout, stderr and exit codes as plain runc gives them, with and without a terminal,
/// with the client's input held open (a person at a terminal) and at end of file (input piped
/// from nothing); no NUL (`^@`) in flox's output; and none of it runs the hook.
async fn streamed_execs(pod: &RunningPod) {
    async fn run(
        pod: &RunningPod,
        container: &str,
        tty: bool,
        stdin_open: bool,
        cmd: &[&str],
    ) -> (i32, Vec<u8>, Vec<u8>) {
        let streams = ExecStreams { cmd: cmd.iter().map(|s| s.to_string()).collect(), tty, size: Some((80, 24)) };
        // The input (one line for a command that reads it, else nothing; a terminal echoes what
        // arrives whenever it arrives) is then held open (the writer half lives until the exec
        // ended) or at end of file.
        let (mut writer, reader) = tokio::io::duplex(64);
        if cmd.last().is_some_and(|c| c.starts_with("read")) {
            tokio::io::AsyncWriteExt::write_all(&mut writer, b"ping\n").await.unwrap();
        }
        let writer = if stdin_open { Some(writer) } else { None };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = pod.exec_streaming(Some(container), &streams, Some(reader), &mut out, &mut err).await;
        drop(writer);
        let exit = exit.unwrap_or_else(|e| panic!("streamed exec {cmd:?} in {container} (tty {tty}): {e}"));
        (exit.exit_code, out, err)
    }
    let commands: [&[&str]; 4] = [
        &["echo", "hello-stream"],
        &["sh", "-c", "echo in-sh; echo to-err >&2; exit 3"],
        &["sh", "-c", "sleep 0.3; echo slow"],
        &["sh", "-c", "read line; echo got=$line"],
    ];
    for tty in [false, true] {
        for stdin_open in [false, true] {
            for command in commands {
                let plain = run(pod, "plain", tty, stdin_open, command).await;
                let flox = run(pod, "app", tty, stdin_open, command).await;
                assert!(
                    !flox.1.contains(&0) && !flox.2.contains(&0),
                    "NUL in flox output of {command:?} (tty {tty}, stdin open {stdin_open}): {flox:?}"
                );
                assert!(!flox.1.starts_with(b"^@"), "^@ in flox output of {command:?}: {flox:?}");
                assert_eq!(
                    flox, plain,
                    "{command:?} (tty {tty}, stdin open {stdin_open}): flox prints what plain runc prints"
                );
            }
        }
    }
    // The hook's exports reach a streamed exec too, and nothing re-ran the hook.
    let (code, out, _) = run(pod, "app", true, true, &["sh", "-c", "echo H=$HOOK_EXPORT V=$ATTACH_VAR"]).await;
    assert_eq!((code, String::from_utf8_lossy(&out).into_owned()), (0, "H=from-hook-hi V=from-vars\r\n".to_string()));
    for i in 0..20 {
        let (code, out, err) = run(pod, "app", i % 2 == 0, false, &["sh", "-c", "echo H=$HOOK_EXPORT"]).await;
        assert_eq!(code, 0, "streamed exec {i}: {err:?}");
        assert!(String::from_utf8_lossy(&out).starts_with("H=from-hook-hi"), "streamed exec {i}: {out:?}");
    }
    assert_eq!(hook_runs(pod).await, 1, "20 streamed execs ran the hook 0 times");
}

/// Not an assertion (speed goals live in the bench): ExecSync p50 into the hook env against
/// a hook-less env on the same image, interleaved so that load on the machine hits both alike.
async fn exec_latency(node: &FloxNode) {
    let hook = node.run(&attach_pod("lat-hook", "flox/attach", None), &[]).await.unwrap();
    let plain = node.run(&attach_pod("lat-plain", "flox/echoip", None), &[]).await.unwrap();
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..41 {
        for (i, pod) in [&hook, &plain].into_iter().enumerate() {
            let began = Instant::now();
            let out = pod.exec_sync(Some("app"), vec!["true".into()], Some(Duration::from_secs(10))).await.unwrap();
            assert_eq!(out.exit_code, 0);
            if round > 0 {
                times[i].push(began.elapsed());
            }
        }
    }
    let [mut hook_times, mut plain_times] = times;
    hook_times.sort();
    plain_times.sort();
    eprintln!(
        "ExecSync p50 over 40 interleaved execs: flox/attach (hook) {:?}, flox/echoip (no hook) {:?}",
        hook_times[20], plain_times[20]
    );
    hook.remove().await.unwrap();
    plain.remove().await.unwrap();
}

fn scenarios(version: ContainerdVersion) {
    let node = FloxNode::start(version);
    support::block_on(async {
        hook_runs_once_and_execs_attach(&node).await;
        slow_hook_and_liveness_probes(&node).await;
        tty_exec_prints_what_plain_runc_prints(&node).await;
        exec_latency(&node).await;
    });
}

#[test]
fn exec_attach_on_containerd_1_7_24() {
    scenarios(ContainerdVersion::V1_7);
}

#[test]
fn exec_attach_on_containerd_2_1_9() {
    scenarios(ContainerdVersion::V2_1);
}
