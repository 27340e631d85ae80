//! `imageless pod ...`: run, exec, logs, ls, rm.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::client::CriClient;
use crate::error::{KubeEvent, PodError};
use crate::logs::Stream;
use crate::manifest::PodManifest;
use crate::runner::{remove_by_uid, PodRunner, RunOptions, RunningPod};
use crate::stream_exec::ExecStreams;

#[derive(Args, Debug, Clone)]
pub struct Endpoint {
    /// CRI endpoint of the container runtime.
    #[arg(long = "cri", env = "IMAGELESS_CRI", default_value = "unix:///run/containerd/containerd.sock")]
    pub cri: String,
    /// Where pods keep logs and emptyDir volumes, and where `secrets/NAME` directories are looked up.
    #[arg(long, env = "IMAGELESS_POD_STATE_ROOT", default_value = "/var/lib/imageless")]
    pub state_root: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum PodCommand {
    /// Run a Pod manifest (or a workload's pod template) over CRI, like kubelet would.
    Run(RunArgs),
    /// Run a command in a container of a running pod (CRI ExecSync).
    Exec(ExecArgs),
    /// Print a container's logs.
    Logs(LogsArgs),
    /// List the pods this runner started.
    Ls(LsArgs),
    /// Stop and remove a pod.
    Rm(RmArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Pod, Deployment, ReplicaSet, StatefulSet, DaemonSet or Job manifest (YAML).
    pub manifest: PathBuf,
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// Secret contents for volumes and secretKeyRef: NAME=DIR, one file per key.
    #[arg(long = "secret", value_name = "NAME=DIR", value_parser = parse_secret)]
    pub secrets: Vec<(String, PathBuf)>,
    /// Start the pod and return, leaving it running.
    #[arg(long)]
    pub detach: bool,
    /// Give up waiting for the main container after this long (e.g. 90s, 5m); the pod is removed.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Import a local OCI image archive into the runtime first (repeatable).
    #[arg(long = "image-archive", value_name = "FILE")]
    pub image_archives: Vec<PathBuf>,
    /// `ctr` binary used for --image-archive.
    #[arg(long, default_value = "ctr")]
    pub ctr: PathBuf,
    /// Run in the node's network namespace whatever the manifest says (no CNI needed).
    #[arg(long)]
    pub host_network: bool,
    /// Keep the pod after the main container exits (default: remove it).
    #[arg(long)]
    pub keep: bool,
    /// Take every hostPath volume beneath DIR (hostPath `/` is DIR, `/etc` is DIR/etc): runs a
    /// node-level pod, such as the installer DaemonSet, against a prepared node root.
    #[arg(long, value_name = "DIR")]
    pub host_path_root: Option<PathBuf>,
    /// Do not run this container of the pod (init or app; repeatable), e.g. one that needs an
    /// API server where there is none. At least one app container must remain.
    #[arg(long = "skip-container", value_name = "NAME")]
    pub skip_containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PodRef {
    /// Pod name.
    pub pod: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub endpoint: Endpoint,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    pub pod: PodRef,
    /// Container name (default: the first app container).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Timeout of a non-streaming exec (ExecSync); not used with -i or -t.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Pass this process's stdin to the command (CRI Exec with streams, as `kubectl exec -i`).
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Allocate a terminal for the command (as `kubectl exec -t`).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Command and arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    pub pod: PodRef,
    #[arg(short = 'c', long)]
    pub container: Option<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub endpoint: Endpoint,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    #[command(flatten)]
    pub pod: PodRef,
}

fn parse_secret(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok((name.into(), PathBuf::from(dir))),
        _ => Err(format!("{s:?} is not NAME=DIR (e.g. floxhub-token=/tmp/token-dir)")),
    }
}

pub fn run(command: PodCommand) -> Result<ExitCode, PodError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|source| PodError::Io {
        what: "starting the async runtime",
        path: PathBuf::new(),
        source,
    })?;
    rt.block_on(async move {
        match command {
            PodCommand::Run(args) => run_pod(args).await,
            PodCommand::Exec(args) => exec(args).await,
            PodCommand::Logs(args) => logs(args).await,
            PodCommand::Ls(args) => ls(args).await,
            PodCommand::Rm(args) => rm(args).await,
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(if code == 0 { 0 } else { 1 }))
}

fn report_event(err: &PodError) {
    if let Some(ev) = err.event() {
        eprintln!("Events:\n  {ev}");
    }
}

async fn run_pod(args: RunArgs) -> Result<ExitCode, PodError> {
    let pod = PodManifest::from_file(&args.manifest)?;
    let client = CriClient::connect(&args.endpoint.cri).await?;
    for archive in &args.image_archives {
        crate::images::import_archive(&args.ctr, client.socket(), archive)?;
    }
    let uid = crate::runner::new_uid();
    let opts = RunOptions {
        state_root: args.endpoint.state_root.clone(),
        secrets: args.secrets.iter().cloned().collect::<BTreeMap<_, _>>(),
        force_host_network: args.host_network,
        uid: Some(uid.clone()),
        stream_logs: !args.detach,
        init_timeout: args.timeout,
        host_path_root: args.host_path_root.clone(),
        skip_containers: args.skip_containers.iter().cloned().collect(),
    };
    let runner = PodRunner::new(client.clone());
    let started = tokio::select! {
        r = runner.run(&pod, &opts) => r,
        _ = interrupted() => {
            eprintln!("interrupted; removing pod {}/{}", pod.namespace, pod.name);
            remove_by_uid(&client, &uid).await?;
            return Ok(ExitCode::from(130));
        }
    };
    let mut running = match started {
        Ok(r) => r,
        Err(e) => {
            report_event(&e);
            return match e {
                PodError::InitContainerFailed { exit_code: code, .. } => {
                    eprintln!("error: {e}");
                    Ok(exit_code(code))
                }
                e => Err(e),
            };
        }
    };
    if args.detach {
        println!("{}/{} {}", running.namespace, running.name, running.sandbox_id);
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = tokio::select! {
        r = running.wait_main(args.timeout) => Some(r),
        _ = interrupted() => None,
    };
    let code = match outcome {
        None => {
            eprintln!("interrupted; removing pod {}/{}", running.namespace, running.name);
            running.remove().await?;
            return Ok(ExitCode::from(130));
        }
        Some(Err(e)) => {
            let _ = running.remove().await;
            return Err(e);
        }
        Some(Ok(exit)) => {
            if exit.exit_code != 0 {
                let detail = if exit.message.is_empty() { String::new() } else { format!(": {}", exit.message) };
                eprintln!(
                    "{}",
                    KubeEvent::warning(
                        if exit.reason.is_empty() { "Error".to_string() } else { exit.reason.clone() },
                        format!(
                            "container {} terminated with exit code {}{detail}",
                            running.container(None)?.name,
                            exit.exit_code
                        )
                    )
                );
            }
            exit.exit_code
        }
    };
    if !args.keep {
        running.remove().await?;
    }
    Ok(exit_code(code))
}

async fn exec(args: ExecArgs) -> Result<ExitCode, PodError> {
    let client = CriClient::connect(&args.pod.endpoint.cri).await?;
    let pod = RunningPod::find(&client, &args.pod.namespace, &args.pod.pod).await?;
    if args.stdin || args.tty {
        let streams = ExecStreams { cmd: args.command, tty: args.tty, size: None };
        let stdin = args.stdin.then(tokio::io::stdin);
        let exit = pod
            .exec_streaming(
                args.container.as_deref(),
                &streams,
                stdin,
                &mut tokio::io::stdout(),
                &mut tokio::io::stderr(),
            )
            .await?;
        return Ok(exit_code(exit.exit_code));
    }
    let out = pod.exec_sync(args.container.as_deref(), args.command, args.timeout).await?;
    std::io::stdout().write_all(&out.stdout).ok();
    std::io::stderr().write_all(&out.stderr).ok();
    Ok(exit_code(out.exit_code))
}

async fn logs(args: LogsArgs) -> Result<ExitCode, PodError> {
    let client = CriClient::connect(&args.pod.endpoint.cri).await?;
    let pod = RunningPod::find(&client, &args.pod.namespace, &args.pod.pod).await?;
    for line in pod.logs(args.container.as_deref())? {
        match line.stream {
            Stream::Stdout => println!("{}", line.text),
            Stream::Stderr => eprintln!("{}", line.text),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn ls(args: LsArgs) -> Result<ExitCode, PodError> {
    let client = CriClient::connect(&args.endpoint.cri).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    println!("{:<16} {:<32} {:<10} {:<10} {:<8} SANDBOX", "NAMESPACE", "NAME", "STATE", "RUNTIME", "AGE");
    for s in RunningPod::list(&client).await? {
        let meta = s.metadata.clone().unwrap_or_default();
        let age = now.saturating_sub(Duration::from_nanos(s.created_at.max(0) as u64));
        let state = if s.state == k8s_cri::v1::PodSandboxState::SandboxReady as i32 { "Ready" } else { "NotReady" };
        let handler = if s.runtime_handler.is_empty() { "default" } else { &s.runtime_handler };
        println!(
            "{:<16} {:<32} {:<10} {:<10} {:<8} {}",
            meta.namespace,
            meta.name,
            state,
            handler,
            humantime::format_duration(Duration::from_secs(age.as_secs())).to_string(),
            &s.id[..s.id.len().min(13)]
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn rm(args: RmArgs) -> Result<ExitCode, PodError> {
    let client = CriClient::connect(&args.pod.endpoint.cri).await?;
    let pod = RunningPod::find(&client, &args.pod.namespace, &args.pod.pod).await?;
    pod.remove().await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Top {
        #[command(subcommand)]
        cmd: PodCommand,
    }

    #[test]
    fn parses_run_and_exec_command_lines() {
        let top = Top::try_parse_from([
            "pod",
            "run",
            "p.yaml",
            "--cri",
            "unix:///x.sock",
            "--secret",
            "tok=/d",
            "--timeout",
            "90s",
            "--host-network",
            "--host-path-root",
            "/tmp/node",
            "--skip-container",
            "a",
            "--skip-container",
            "b",
        ])
        .unwrap();
        let PodCommand::Run(r) = top.cmd else { panic!() };
        assert_eq!(r.secrets, [("tok".to_string(), PathBuf::from("/d"))]);
        assert_eq!(r.host_path_root.as_deref(), Some(std::path::Path::new("/tmp/node")));
        assert_eq!(r.skip_containers, ["a", "b"]);
        assert_eq!(r.timeout, Some(Duration::from_secs(90)));
        assert!(r.host_network && !r.detach);

        let top = Top::try_parse_from(["pod", "exec", "p", "-c", "c", "--", "sh", "-c", "echo hi"]).unwrap();
        let PodCommand::Exec(e) = top.cmd else { panic!() };
        assert_eq!(e.command, ["sh", "-c", "echo hi"]);
        assert_eq!(e.container.as_deref(), Some("c"));

        let err = Top::try_parse_from(["pod", "run", "p.yaml", "--secret", "novalue"]).err().unwrap().to_string();
        assert!(err.contains("\"novalue\" is not NAME=DIR"), "{err}");
    }
}
