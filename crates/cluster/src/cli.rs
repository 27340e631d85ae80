//! `imageless node label [--remove] [--wait]` and `imageless node wait`: parsing and running.
use std::process::ExitCode;

use crate::label::{self, ClusterError, ENABLED_LABEL};

#[derive(clap::Subcommand, Debug)]
pub enum NodeCommand {
    /// Set (or with --remove, remove) the flox.dev/enabled=true label on this node, through the
    /// API server with the pod's service account.
    Label(LabelArgs),
    /// Wait until terminated (keeps a DaemonSet pod Ready once its work is done).
    Wait,
    /// The node agent: labels the node, then runs disk-pressure gc, pre-pulls, the metrics
    /// endpoint and the pods' pull events until terminated (deploy/README.md).
    Agent(AgentArgs),
    /// One pre-pull, in a child process of the agent (prints `{"key":…,"generation":…}`).
    #[command(hide = true)]
    PullOne {
        environment: String,
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Read a FloxHub token from stdin.
        #[arg(long)]
        token_stdin: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// This node (the DaemonSet sets NODE_NAME from spec.nodeName).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node: String,
    /// Without an API server: no label, events, ConfigMap or annotation; gc, the node config's
    /// pre-pull list and metrics only.
    #[arg(long)]
    pub standalone: bool,
    /// The node config (default: $IMAGELESS_CONFIG, else /etc/imageless/config.toml).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Where the Prometheus endpoint listens (`/metrics`).
    #[arg(long, default_value = "0.0.0.0:9464")]
    pub metrics_listen: std::net::SocketAddr,
    /// How often the store is checked against the gc thresholds.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub gc_interval: std::time::Duration,
    /// How often pre-pulled environments are pulled again (a live generation moves on).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub prepull_interval: std::time::Duration,
    /// The namespace of the pre-pull ConfigMap and its token Secrets.
    #[arg(long, env = "POD_NAMESPACE", default_value = "imageless-system")]
    pub namespace: String,
}

#[derive(clap::Args, Debug)]
pub struct LabelArgs {
    /// The node to label.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Remove the label instead of setting it.
    #[arg(long)]
    pub remove: bool,
    /// Afterwards, wait until terminated.
    #[arg(long)]
    pub wait: bool,
}

pub fn run(command: NodeCommand) -> Result<ExitCode, ClusterError> {
    if let NodeCommand::PullOne { environment, config, token_stdin } = &command {
        return match crate::agent::prepull::pull_one(config.as_deref(), environment, *token_stdin) {
            Ok(pulled) => {
                println!("{}", serde_json::to_string(&pulled).unwrap_or_default());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::FAILURE)
            }
        };
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ClusterError::Io { what: "starting the async runtime", source })?;
    rt.block_on(async {
        match command {
            NodeCommand::Label(args) => {
                let config = kube::Config::incluster()?;
                let client = kube::Client::try_from(config).map_err(|e| ClusterError::Client(Box::new(e)))?;
                label::set_label(client, &args.node, !args.remove).await?;
                match args.remove {
                    false => println!("labelled node {} {ENABLED_LABEL}=true", args.node),
                    true => println!("removed label {ENABLED_LABEL} from node {}", args.node),
                }
                if args.wait {
                    wait_for_termination().await?;
                }
            }
            NodeCommand::Wait => wait_for_termination().await?,
            NodeCommand::PullOne { .. } => unreachable!("handled before the runtime starts"),
            NodeCommand::Agent(args) => {
                let client = match args.standalone {
                    true => None,
                    false => {
                        let config = kube::Config::incluster()?;
                        let client = kube::Client::try_from(config).map_err(|e| ClusterError::Client(Box::new(e)))?;
                        label::set_label(client.clone(), &args.node, true).await?;
                        println!("labelled node {} {ENABLED_LABEL}=true", args.node);
                        Some(client)
                    }
                };
                let options = crate::agent::AgentOptions {
                    node: args.node,
                    config: args.config,
                    metrics_listen: args.metrics_listen,
                    gc_interval: args.gc_interval,
                    prepull_interval: args.prepull_interval,
                    namespace: args.namespace,
                };
                crate::agent::run(options, client).await.map_err(|e| ClusterError::Agent(Box::new(e)))?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Returns on SIGTERM (what the kubelet sends) or SIGINT.
pub(crate) async fn wait_for_termination() -> Result<(), ClusterError> {
    use tokio::signal::unix::{signal, SignalKind};
    let io = |source| ClusterError::Io { what: "waiting for a signal", source };
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside a pod (no KUBERNETES_SERVICE_HOST, no service account) the error says what is
    /// missing and where the command is meant to run.
    #[test]
    fn outside_a_pod_the_error_names_the_in_cluster_config() {
        assert!(std::env::var_os("KUBERNETES_SERVICE_HOST").is_none(), "this test runs outside a cluster");
        let err = run(NodeCommand::Label(LabelArgs { node: "node-1".into(), remove: false, wait: false }))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no in-cluster Kubernetes config") && err.contains("service account"), "{err}");
    }
}
