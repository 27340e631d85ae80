//! Pod events from pull records, as the kubelet posts them for images: `PullingEnvironment`,
//! `PulledEnvironment`, and a Warning `FailedPullEnvironment` with the runtime's message.
//!
//! Posted as `events.k8s.io/v1` Events in the pod's namespace: `regarding` is the Pod (with
//! its uid, and `spec.containers{NAME}` as field path when the record names the container),
//! `reportingController` [`REPORTING_CONTROLLER`], `reportingInstance` the node's agent,
//! `eventTime` the record's time. The same event again within [`SERIES_WINDOW`] (a create the
//! kubelet retries) is not a new object: the first one gets a `series` (count, last observed
//! time) by a merge patch, as client-go's event recorder does.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};

use imageless_node::pressure::human;
use imageless_node::pull_record::{Phase, PodRef, PullRecord};

pub const REPORTING_CONTROLLER: &str = "flox.dev/imageless-agent";
/// events.k8s.io/v1 refuses a note over 1 kB.
pub const MAX_NOTE: usize = 1024;
/// Repeats of one event within this window become its series (client-go: 6 minutes).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// The parts of an event a record decides (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    pub pod: PodRef,
    pub type_: &'static str,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
    pub time_ms: u64,
}

/// The event a record gives, if any: none without a pod (the agent's own pre-pulls, `imageless
/// pull`), and none for a hit of the sandbox's prefetch (the container's create reports it).
pub fn event_for(record: &PullRecord) -> Option<EventSpec> {
    let pod = record.pod.clone()?;
    let what = match record.generation {
        Some(g) => format!("environment {} generation {g}", record.env),
        None => format!("environment {}", record.env),
    };
    let (type_, reason, action, note) = match &record.phase {
        Phase::Start { paths, bytes } => (
            "Normal",
            "PullingEnvironment",
            "Pulling",
            format!("Pulling {what}: {paths} store paths, {} ({bytes} bytes) to fetch", human(*bytes)),
        ),
        Phase::End { duration_ms, paths, bytes, sources, warnings } => {
            let from = if sources.is_empty() {
                "nothing fetched: the node store had every path".to_string()
            } else {
                let parts: Vec<String> = sources
                    .iter()
                    .filter(|(_, s)| s.paths > 0)
                    .map(|(url, s)| format!("{url} ({} paths, {} bytes)", s.paths, s.bytes))
                    .collect();
                format!("from {}", parts.join(", "))
            };
            // Substituters skipped or corrupt NARs: what the runc log says, on the event too.
            let from = if warnings.is_empty() { from } else { format!("{from}; {}", warnings.join("; ")) };
            (
                "Normal",
                "PulledEnvironment",
                "Pulled",
                format!(
                    "Successfully pulled {what} in {:.3}s: {} ({bytes} bytes) in {paths} store paths {from}",
                    *duration_ms as f64 / 1000.0,
                    human(*bytes)
                ),
            )
        }
        Phase::Failed { message, .. } => ("Warning", "FailedPullEnvironment", "Pulling", message.clone()),
        Phase::Hit => {
            pod.container.as_ref()?;
            ("Normal", "PulledEnvironment", "Pulled", format!("{} already present on machine", capitalize(&what)))
        }
    };
    Some(EventSpec { pod, type_, reason, action, note: bounded_note(&note), time_ms: record.time_ms })
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

fn bounded_note(note: &str) -> String {
    if note.len() <= MAX_NOTE {
        return note.to_string();
    }
    let mut end = MAX_NOTE - '…'.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &note[..end])
}

pub fn micro_time(time_ms: u64) -> MicroTime {
    let t = k8s_openapi::chrono::DateTime::from_timestamp_millis(time_ms as i64).unwrap_or_default();
    MicroTime(t)
}

/// The Event object for `spec` (name: `<pod>.<hex>`, as the kubelet names its events).
pub fn event_object(spec: &EventSpec, instance: &str, unique: u64) -> Event {
    let field_path = spec.pod.container.as_ref().map(|c| format!("spec.containers{{{c}}}"));
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:016x}", spec.pod.name, unique)),
            namespace: Some(spec.pod.namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(micro_time(spec.time_ms)),
        action: Some(spec.action.to_string()),
        reason: Some(spec.reason.to_string()),
        note: Some(spec.note.clone()),
        type_: Some(spec.type_.to_string()),
        reporting_controller: Some(REPORTING_CONTROLLER.to_string()),
        reporting_instance: Some(instance.to_string()),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(spec.pod.name.clone()),
            namespace: Some(spec.pod.namespace.clone()),
            uid: Some(spec.pod.uid.clone()),
            field_path,
            ..ObjectReference::default()
        }),
        ..Event::default()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("posting event {reason} for pod {namespace}/{name}: {source}")]
pub struct EventError {
    pub reason: &'static str,
    pub namespace: String,
    pub name: String,
    pub source: Box<kube::Error>,
}

struct Seen {
    name: String,
    count: i32,
    first: Instant,
}

/// Posts events through the API server, folding repeats into series.
pub struct EventPoster {
    client: kube::Client,
    /// `reportingInstance`: this node's agent.
    instance: String,
    seen: HashMap<(String, String, &'static str, String), Seen>,
    counter: u64,
}

impl EventPoster {
    pub fn new(client: kube::Client, node: &str) -> EventPoster {
        let mut instance = format!("imageless-agent-{node}");
        instance.truncate(128);
        EventPoster { client, instance, seen: HashMap::new(), counter: 0 }
    }

    pub async fn post(&mut self, spec: &EventSpec) -> Result<(), EventError> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &spec.pod.namespace);
        let err = |source| EventError {
            reason: spec.reason,
            namespace: spec.pod.namespace.clone(),
            name: spec.pod.name.clone(),
            source: Box::new(source),
        };
        self.seen.retain(|_, s| s.first.elapsed() < SERIES_WINDOW);
        let key = (spec.pod.namespace.clone(), spec.pod.uid.clone(), spec.reason, spec.note.clone());
        if let Some(seen) = self.seen.get_mut(&key) {
            seen.count += 1;
            let series = EventSeries { count: seen.count, last_observed_time: micro_time(spec.time_ms) };
            let patch = serde_json::json!({ "series": series });
            api.patch(&seen.name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(err)?;
            return Ok(());
        }
        self.counter += 1;
        let unique = (spec.time_ms << 16) | (self.counter & 0xffff);
        let event = event_object(spec, &self.instance, unique);
        let name = event.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &event).await.map_err(err)?;
        self.seen.insert(key, Seen { name, count: 1, first: Instant::now() });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imageless_node::pull_record::SourceBytes;

    fn record(phase: Phase, container: Option<&str>) -> PullRecord {
        PullRecord {
            v: 1,
            time_ms: 1_700_000_000_123,
            pull: "9.1".into(),
            env: "flox/hello".into(),
            generation: Some(3),
            mode: "run".into(),
            pod: Some(PodRef {
                namespace: "web".into(),
                name: "hello-1".into(),
                uid: "6f1c".into(),
                container: container.map(String::from),
            }),
            phase,
        }
    }

    #[test]
    fn pulling_pulled_and_failed_carry_the_figures() {
        let e = event_for(&record(Phase::Start { paths: 12, bytes: 45_234_567 }, None)).unwrap();
        assert_eq!((e.type_, e.reason, e.action), ("Normal", "PullingEnvironment", "Pulling"));
        assert_eq!(
            e.note,
            "Pulling environment flox/hello generation 3: 12 store paths, 45.2 MB (45234567 bytes) to fetch"
        );
        let sources =
            [("http://hub/cache".to_string(), SourceBytes { paths: 12, bytes: 45_234_567, ..SourceBytes::default() })]
                .into();
        let e = event_for(&record(
            Phase::End { duration_ms: 1234, paths: 12, bytes: 45_234_567, sources, warnings: Vec::new() },
            None,
        ))
        .unwrap();
        assert_eq!(e.reason, "PulledEnvironment");
        assert_eq!(
            e.note,
            "Successfully pulled environment flox/hello generation 3 in 1.234s: 45.2 MB (45234567 bytes) in 12 store paths from http://hub/cache (12 paths, 45234567 bytes)"
        );
        let long = "flox: x".repeat(400);
        let e = event_for(&record(Phase::Failed { duration_ms: 1, kind: "hub".into(), message: long }, None)).unwrap();
        assert_eq!((e.type_, e.reason), ("Warning", "FailedPullEnvironment"));
        assert!(e.note.len() <= MAX_NOTE && e.note.ends_with('…'));
        // A sandbox prefetch's hit says nothing; the container's create does.
        assert!(event_for(&record(Phase::Hit, None)).is_none());
        let e = event_for(&record(Phase::Hit, Some("app"))).unwrap();
        assert_eq!(e.note, "Environment flox/hello generation 3 already present on machine");
        let mut no_pod = record(Phase::Hit, None);
        no_pod.pod = None;
        assert!(event_for(&no_pod).is_none());
    }

    #[test]
    fn the_event_object_regards_the_pod_with_its_uid() {
        let spec = event_for(&record(Phase::Start { paths: 1, bytes: 1 }, Some("app"))).unwrap();
        let ev = event_object(&spec, "imageless-agent-node-1", 0xabc);
        assert_eq!(ev.metadata.name.as_deref(), Some("hello-1.0000000000000abc"));
        let r = ev.regarding.unwrap();
        assert_eq!(r.uid.as_deref(), Some("6f1c"));
        assert_eq!(r.field_path.as_deref(), Some("spec.containers{app}"));
        let json = serde_json::to_value(micro_time(1_700_000_000_123)).unwrap();
        assert_eq!(json, "2023-11-14T22:13:20.123000Z");
    }
}
