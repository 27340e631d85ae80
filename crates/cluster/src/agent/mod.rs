//! `imageless node agent`: the long-running container of the installer DaemonSet, looking after
//! its node. Everything it does is optional for correctness: with the agent down, pods start
//! and pulls work (the runtime never waits for it; it only reads what the runtime wrote).
//!
//! - [`gc_pressure`]: disk-pressure gc every `--gc-interval` (the node crate's policy);
//! - [`prepull`]: environments pulled on start and kept warm;
//! - [`metrics`]: the Prometheus endpoint;
//! - [`events`]: the pods' pull events, from the runtime's pull records
//!   (`imageless_node::pull_record`), tailed every second.
pub mod events;
pub mod gc_pressure;
pub mod metrics;
pub mod prepull;
pub mod server;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imageless_node::config::NodeConfig;
use imageless_node::pull_record::Tail;

use metrics::Metrics;

/// Where an API call's object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Any namespace, or a cluster-scoped object: a ClusterRole.
    Cluster,
    /// The agent's own namespace: a Role there.
    OwnNamespace,
}

/// One kind of API request the agent makes: what deploy/rbac.yaml must grant, and all it may
/// grant (crates/cluster/tests/deploy_rbac.rs compares the rendered manifests with this list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiCall {
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
    pub scope: Scope,
    /// Only this object (RBAC `resourceNames`).
    pub name: Option<&'static str>,
}

pub const API_CALLS: &[ApiCall] = &[
    // The flox.dev/enabled label (crate::label) and the pre-pull status annotation.
    ApiCall { group: "", resource: "nodes", verb: "patch", scope: Scope::Cluster, name: None },
    // Pod events (events::EventPoster): new ones, and a repeat's series.
    ApiCall { group: "events.k8s.io", resource: "events", verb: "create", scope: Scope::Cluster, name: None },
    ApiCall { group: "events.k8s.io", resource: "events", verb: "patch", scope: Scope::Cluster, name: None },
    // The pre-pull list and its token Secrets (prepull).
    ApiCall {
        group: "",
        resource: "configmaps",
        verb: "get",
        scope: Scope::OwnNamespace,
        name: Some(prepull::CONFIGMAP),
    },
    ApiCall { group: "", resource: "secrets", verb: "get", scope: Scope::OwnNamespace, name: None },
];

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// This node's name (events' reporting instance, the status annotation); may be empty
    /// without an API server.
    pub node: String,
    /// The node config (default: `$IMAGELESS_CONFIG`, else /etc/imageless/config.toml).
    pub config: Option<PathBuf>,
    pub metrics_listen: SocketAddr,
    pub gc_interval: Duration,
    pub prepull_interval: Duration,
    /// Namespace of the pre-pull ConfigMap and token Secrets (the agent's own).
    pub namespace: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] imageless_node::config::ConfigError),
    #[error("flox: node config: {0}")]
    Thresholds(#[from] imageless_node::pressure::ThresholdError),
    #[error("flox: node config: prepull: {0}")]
    Prepull(#[from] prepull::ListError),
    #[error("listening for metrics on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
}

/// What the agent's tasks share.
pub struct Shared {
    pub config: NodeConfig,
    pub metrics: Metrics,
    /// Keys of the pre-pulled environments: never removed by disk-pressure gc.
    pub pinned: Mutex<HashSet<String>>,
    pub prepull_status: Mutex<BTreeMap<String, prepull::Status>>,
}

/// Runs until SIGTERM or SIGINT. With `client`, it also posts pod events, reads the pre-pull
/// ConfigMap and its Secrets, and annotates the node with the pre-pull status.
pub async fn run(options: AgentOptions, client: Option<kube::Client>) -> Result<(), AgentError> {
    let config = NodeConfig::load(options.config.as_deref())?;
    imageless_node::pressure::Thresholds::from_config(&config)?;
    let listed = prepull::parse_list(&config.prepull.join("\n"))?;
    let shared = Arc::new(Shared::new(config));
    let listener = tokio::net::TcpListener::bind(options.metrics_listen)
        .await
        .map_err(|source| AgentError::Listen { addr: options.metrics_listen, source })?;
    let addr = listener.local_addr().map_err(|source| AgentError::Io { what: "metrics address", source })?;
    tracing::info!(%addr, "node agent: metrics at http://{addr}/metrics");
    println!("imageless node agent: metrics at http://{addr}/metrics");

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(server::serve(listener, shared.clone()));
    tasks.spawn(tail_records(shared.clone(), client.clone(), options.node.clone()));
    tasks.spawn(prepull_loop(shared.clone(), client.clone(), options.clone(), listed));
    tasks.spawn(gc_pressure::run(shared.clone(), options.gc_interval));
    let result = crate::cli::wait_for_termination().await;
    tasks.abort_all();
    result.map_err(|e| AgentError::Io { what: "waiting for a signal", source: std::io::Error::other(e.to_string()) })
}

/// Every second: the records the runtime appended, into the metrics and (with an API
/// server) the pods' events.
async fn tail_records(shared: Arc<Shared>, client: Option<kube::Client>, node: String) {
    let mut tail = Tail::from_end(&shared.config.state_root);
    let mut poster = client.map(|c| events::EventPoster::new(c, &node));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        forward(&shared, &mut tail, poster.as_mut()).await;
    }
}

/// One look at the records: each new one counted, and posted as its pod's event when it names
/// a pod and there is an API server. Returns how many records were read.
pub async fn forward(shared: &Shared, tail: &mut Tail, mut poster: Option<&mut events::EventPoster>) -> usize {
    let records = tail.poll();
    for record in &records {
        shared.metrics.observe(record);
        let (Some(poster), Some(spec)) = (poster.as_deref_mut(), events::event_for(record)) else { continue };
        if let Err(e) = poster.post(&spec).await {
            tracing::warn!("{e}");
            shared.metrics.error("events");
        }
    }
    records.len()
}

impl Shared {
    pub fn new(config: NodeConfig) -> Shared {
        Shared {
            config,
            metrics: Metrics::default(),
            pinned: Mutex::new(HashSet::new()),
            prepull_status: Mutex::new(BTreeMap::new()),
        }
    }
}

async fn prepull_loop(
    shared: Arc<Shared>,
    client: Option<kube::Client>,
    options: AgentOptions,
    listed: Vec<prepull::Wanted>,
) {
    loop {
        let from_configmap = match &client {
            Some(c) => prepull::configmap_list(c, &options.namespace).await.unwrap_or_else(|e| {
                tracing::warn!("{e}");
                shared.metrics.error("prepull");
                vec![]
            }),
            None => vec![],
        };
        let wanted = prepull::merge(listed.clone(), from_configmap);
        prepull::pull_all(&shared, client.as_ref(), &options, &wanted).await;
        tokio::time::sleep(options.prepull_interval).await;
    }
}
