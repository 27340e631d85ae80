//! The product docs' pods (../shared/seeds) and the environment they name, for the tests that
//! run them unchanged: `limeytexan/echoip`, published on a local hub with echoip's lock from the
//! world, public (as the docs' telemetry example assumes).
use std::path::PathBuf;

use crate::flox_node::Hub;

/// Where echoip, the docs' command, listens (its default; the docs give no port).
pub const ECHOIP_ADDR: &str = "127.0.0.1:8080";

/// The product docs beside the repository.
pub fn seeds() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/seeds/imageless-kubernetes-configuration.md"))
}

/// The complete Pod manifests among the docs' YAML blocks (some are excerpts with `...`), in
/// the docs' order: the auth example (a token secret volume), then the telemetry one.
pub fn docs_pods() -> Vec<String> {
    let text = std::fs::read_to_string(seeds()).expect("the product docs beside the repository");
    text.split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .filter(|yaml| !yaml.contains("\n...") && yaml.contains("kind: Pod"))
        .map(String::from)
        .collect()
}

/// Publishes the docs' environment on `hub` with the world's echoip lock (no paths: the hub's
/// cache already serves them).
pub fn publish_docs_environment(hub: &Hub) {
    let root = hub.root.display().to_string();
    let lock = hub.root.join("world/envs/flox/echoip/2/manifest.lock");
    hub.imageless(&[
        "hub",
        "publish",
        "--root",
        &root,
        "limeytexan/echoip",
        "--lock",
        lock.to_str().expect("UTF-8 path"),
        "--no-paths",
    ]);
}
