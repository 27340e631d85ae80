//! The spec edit on real config.json files written by containerd 1.6.20 through CRI (a pod
//! sandbox and an app container, with the flox.dev annotations containerd passes on), against
//! checked-in expected outputs. `UPDATE_GOLDEN=1 cargo test -p imageless-core --test spec_golden`
//! rewrites the expected files; review the diff.
use std::path::PathBuf;

use imageless_core::decide::{decide, Decision};
use imageless_core::spec_edit::{container_info, FloxEdit, NixView};
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/spec")).join(name)
}

fn load(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(data(name)).unwrap()).unwrap()
}

fn golden(name: &str, value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(data(name), &text).unwrap();
    }
    let want = std::fs::read_to_string(data(name))
        .unwrap_or_else(|_| panic!("missing golden {name}: run with UPDATE_GOLDEN=1"));
    assert_eq!(text, want, "{name} differs from the golden file");
}

fn edit(nix: NixView) -> FloxEdit {
    FloxEdit {
        env_dir: "/var/lib/imageless/envs/0123456789abcdef0123456789abcdef/env".into(),
        activator: "/usr/local/bin/flox-activate".into(),
        nix,
        description: "flox/echoip".into(),
        disable_metrics: false,
    }
}

fn closure() -> NixView {
    NixView::Closure { view: "/var/lib/imageless/views/0123456789abcdef0123456789abcdef/store".into() }
}

#[test]
fn sandbox_is_never_edited_but_prefetches() {
    let spec = load("sandbox.json");
    match decide(&container_info(&spec)).unwrap() {
        Decision::Prefetch { environment, .. } => assert_eq!(environment.to_string(), "flox/echoip"),
        other => panic!("sandbox: {other:?}"),
    }
}

#[test]
fn skipped_container_passes_through() {
    let mut spec = load("container.json");
    spec["annotations"]["flox.dev/skip-containers"] = Value::String("sidecar, app".into());
    assert_eq!(decide(&container_info(&spec)).unwrap(), Decision::PassThrough);
}

#[test]
fn plain_container_closure_view() {
    let mut spec = load("container.json");
    let Decision::Wrap(opts) = decide(&container_info(&spec)).unwrap() else { panic!("not wrapped") };
    assert_eq!(opts.environment.to_string(), "flox/echoip");
    let before = spec.clone();
    edit(closure()).apply_to_spec(&mut spec).unwrap();
    // Every field containerd wrote is still there.
    for key in before.as_object().unwrap().keys() {
        assert!(spec.get(key).is_some(), "{key} dropped");
    }
    golden("container.flox-closure.json", &spec);
}

#[test]
fn mutable_container_overlay() {
    let mut spec = load("container.json");
    edit(NixView::Overlay {
        lower: "/var/lib/imageless/views/0123456789abcdef0123456789abcdef".into(),
        upper: "/var/lib/imageless/overlays/ID/upper".into(),
        work: "/var/lib/imageless/overlays/ID/work".into(),
    })
    .apply_to_spec(&mut spec)
    .unwrap();
    golden("container.flox-mutable.json", &spec);
}

#[test]
fn exec_process_is_wrapped_once() {
    let spec = load("container.json");
    let mut process = spec["process"].clone();
    process["args"] = serde_json::json!(["hello", "--greeting", "x"]);
    let e = FloxEdit { disable_metrics: true, ..edit(closure()) };
    e.apply_to_exec_process(&mut process).unwrap();
    let once = process.clone();
    e.apply_to_exec_process(&mut process).unwrap();
    assert_eq!(process, once, "a second wrap changes nothing");
    golden("exec-process.flox.json", &process);
}
