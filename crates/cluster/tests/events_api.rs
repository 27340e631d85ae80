//! The agent's events against a local HTTP server standing in for the API server: every
//! request is checked against the Kubernetes API's shapes (path, method, content type, the
//! body as k8s-openapi's `events.k8s.io/v1` Event with no field lost), and the events arrive
//! in the order of the pull records with their figures; a repeat becomes the first event's series.
use std::sync::{Arc, Mutex};

use imageless_cluster::agent::{events, forward, Shared};
use imageless_node::config::NodeConfig;
use imageless_node::pull_record::{self, Phase, PodRef, PullRecord, SourceBytes, Tail};
use k8s_openapi::api::events::v1::{Event, EventSeries};

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    body: serde_json::Value,
}

/// Answers like the API server: POST → 201 with the object, PATCH → 200 with the merged object.
fn api_server() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", server.server_addr().to_ip().unwrap());
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut objects: std::collections::HashMap<String, serde_json::Value> = Default::default();
        for mut req in server.incoming_requests() {
            let mut text = String::new();
            req.as_reader().read_to_string(&mut text).unwrap();
            let content_type = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Content-Type"))
                .map(|h| h.value.to_string())
                .unwrap_or_default();
            let body: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
            let path = req.url().split('?').next().unwrap().to_string();
            let method = req.method().to_string();
            log.lock().unwrap().push(Seen {
                method: method.clone(),
                path: path.clone(),
                content_type,
                body: body.clone(),
            });
            let (status, answer) = match method.as_str() {
                "POST" => {
                    let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    objects.insert(format!("{path}/{name}"), body.clone());
                    (201, body)
                }
                "PATCH" => match objects.get_mut(&path) {
                    Some(obj) => {
                        obj["series"] = body["series"].clone();
                        (200, obj.clone())
                    }
                    None => (
                        404,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}),
                    ),
                },
                _ => (405, serde_json::Value::Null),
            };
            let header = tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap();
            let _ = req.respond(
                tiny_http::Response::from_string(answer.to_string()).with_status_code(status).with_header(header),
            );
        }
    });
    (addr, seen)
}

fn pod(name: &str, container: Option<&str>) -> Option<PodRef> {
    Some(PodRef {
        namespace: "shop".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        container: container.map(String::from),
    })
}

fn record(pull: &str, pod: Option<PodRef>, phase: Phase) -> PullRecord {
    PullRecord {
        v: pull_record::VERSION,
        time_ms: 1_760_000_000_000,
        pull: pull.into(),
        env: "flox/echoip".into(),
        generation: Some(2),
        mode: "run".into(),
        pod,
        phase,
    }
}

/// Parses `v` as `T` and checks that serializing it back gives the same JSON (no field dropped,
/// none misspelt), nulls aside.
fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(v: &serde_json::Value) -> T {
    let parsed: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
    assert_eq!(serde_json::to_value(&parsed).unwrap(), *v, "fields lost parsing {v}");
    parsed
}

#[tokio::test]
async fn pull_records_become_the_pods_events_in_order_with_their_figures() {
    let (url, seen) = api_server();
    let tmp = tempfile::tempdir().unwrap();
    let config = NodeConfig { state_root: tmp.path().to_path_buf(), ..NodeConfig::default() };
    let shared = Shared::new(config);
    let mut tail = Tail::from_end(tmp.path());
    let kube_config = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(kube_config).unwrap();
    let mut poster = events::EventPoster::new(client, "node-1");

    let sources = [(
        "http://127.0.0.1:1/cache".to_string(),
        SourceBytes { paths: 7, bytes: 1_234_567, ..SourceBytes::default() },
    )]
    .into();
    let failed = || Phase::Failed {
        duration_ms: 20,
        kind: "no-room".into(),
        message: "flox: pulling flox/echoip needs 1.2 MB (1234567 bytes, 7 store paths) …".into(),
    };
    for r in [
        record("1.0", pod("web-1", None), Phase::Start { paths: 7, bytes: 1_234_567 }),
        record(
            "1.0",
            pod("web-1", None),
            Phase::End { duration_ms: 1500, paths: 7, bytes: 1_234_567, sources, warnings: Vec::new() },
        ),
        record("1.1", None, Phase::Start { paths: 1, bytes: 1 }),
        record("1.2", pod("web-2", Some("app")), failed()),
        record("1.3", pod("web-2", Some("app")), failed()),
        record("1.4", pod("web-3", None), Phase::Hit),
        record("1.5", pod("web-3", Some("app")), Phase::Hit),
    ] {
        pull_record::append(tmp.path(), &r);
    }
    assert_eq!(forward(&shared, &mut tail, Some(&mut poster)).await, 7);

    let seen = seen.lock().unwrap().clone();
    let summary: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.method.clone(), s.body["reason"].as_str().map(String::from).unwrap_or_else(|| "series".into())))
        .collect();
    let expect = [
        ("POST", "PullingEnvironment"),
        ("POST", "PulledEnvironment"),
        ("POST", "FailedPullEnvironment"),
        ("PATCH", "series"),
        ("POST", "PulledEnvironment"),
    ];
    assert_eq!(summary, expect.map(|(m, r)| (m.to_string(), r.to_string())), "{seen:#?}");

    let mut events = Vec::new();
    for s in seen.iter().filter(|s| s.method == "POST") {
        assert_eq!(s.path, "/apis/events.k8s.io/v1/namespaces/shop/events");
        assert!(s.content_type.starts_with("application/json"), "{}", s.content_type);
        let ev: Event = strict(&s.body);
        assert_eq!(ev.metadata.namespace.as_deref(), Some("shop"));
        assert!(ev.event_time.is_some(), "events.k8s.io/v1 requires eventTime");
        assert_eq!(ev.reporting_controller.as_deref(), Some("flox.dev/imageless-agent"));
        assert_eq!(ev.reporting_instance.as_deref(), Some("imageless-agent-node-1"));
        assert!(ev.action.as_deref().is_some_and(|a| !a.is_empty() && a.len() <= 128));
        assert!(ev.note.as_deref().is_some_and(|n| n.len() <= 1024));
        assert!(matches!(ev.type_.as_deref(), Some("Normal" | "Warning")));
        let r = ev.regarding.clone().unwrap();
        assert_eq!((r.api_version.as_deref(), r.kind.as_deref()), (Some("v1"), Some("Pod")));
        assert_eq!(r.uid.as_deref(), Some(format!("uid-{}", r.name.as_deref().unwrap()).as_str()));
        assert!(ev.series.is_none(), "a new event has no series");
        events.push(ev);
    }
    assert_eq!(
        events[0].note.as_deref(),
        Some("Pulling environment flox/echoip generation 2: 7 store paths, 1.2 MB (1234567 bytes) to fetch")
    );
    assert_eq!(
        events[1].note.as_deref(),
        Some("Successfully pulled environment flox/echoip generation 2 in 1.500s: 1.2 MB (1234567 bytes) in 7 store paths from http://127.0.0.1:1/cache (7 paths, 1234567 bytes)")
    );
    assert_eq!(events[2].type_.as_deref(), Some("Warning"));
    assert_eq!(events[2].regarding.as_ref().unwrap().field_path.as_deref(), Some("spec.containers{app}"));
    assert!(events[2].note.as_deref().unwrap().starts_with("flox: pulling flox/echoip needs"));
    assert_eq!(events[3].note.as_deref(), Some("Environment flox/echoip generation 2 already present on machine"));

    // The repeat: a merge patch of the first failure's series.
    let patch = &seen[3];
    assert_eq!(
        patch.path,
        format!("/apis/events.k8s.io/v1/namespaces/shop/events/{}", events[2].metadata.name.as_deref().unwrap())
    );
    assert_eq!(patch.content_type, "application/merge-patch+json");
    let series: EventSeries = strict(&patch.body["series"]);
    assert_eq!(series.count, 2);
    assert_eq!(patch.body.as_object().unwrap().len(), 1, "only the series changes: {}", patch.body);
    // Metrics saw every record, the pod-less one too.
    let text = shared.metrics.render(&Default::default());
    assert!(text.contains("imageless_environment_cache_misses_total 2\n"), "{text}");
    assert!(text.contains("imageless_errors_total{kind=\"no-room\"} 2\n"), "{text}");
}
