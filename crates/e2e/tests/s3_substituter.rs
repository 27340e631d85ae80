//! `s3://` substituters against a real S3 store (Garage, single node on loopback): `imageless
//! pull flox/large` from a bucket holding the world's cache gives the node store byte for byte
//! what the pull through the hub gives; wrong credentials or a missing bucket is one error that
//! names the endpoint and the bucket, and nothing of the pull is visible. The credentials come
//! from the node config's `s3_credentials_file` and never appear in the output.
use std::path::Path;
use std::process::{Command, Output};

use imageless_e2e::flox_node::{imageless, world_root, Hub, NodeConfigFile};
use imageless_e2e::garage::Garage;
use imageless_e2e::store_tree::tree;

fn large_closure(hub: &Hub) -> Vec<String> {
    let world: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hub.root.join("world.json")).unwrap()).unwrap();
    let env = &world["environments"]["flox/large"];
    let gen = env["live_generation"].to_string();
    env["generations"][gen.as_str()]["closure"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().into()).collect()
}

/// A node living in `dir` whose one substituter is `substituter`, with `extra` config lines.
fn pull(dir: &Path, hub: &Hub, substituter: &str, extra: &str) -> Output {
    let file = NodeConfigFile {
        cache_url: substituter.to_string(),
        extra: extra.to_string(),
        ..NodeConfigFile::new(dir, hub)
    };
    let config = dir.join("node.toml");
    file.write(&config);
    Command::new(imageless()).args(["pull", "flox/large"]).env("IMAGELESS_CONFIG", &config).output().unwrap()
}

fn credentials_file(dir: &Path, id: &str, secret: &str) -> String {
    let path = dir.join("aws-credentials");
    std::fs::write(&path, format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n")).unwrap();
    format!("s3_credentials_file = {:?}", path.display().to_string())
}

fn store_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("state/store"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn pull_from_an_s3_bucket_matches_the_pull_through_the_hub() {
    let _ = world_root();
    let work = tempfile::tempdir().unwrap();
    let hub = Hub::start(work.path());
    let closure = large_closure(&hub);

    let via_hub = work.path().join("via-hub");
    std::fs::create_dir_all(&via_hub).unwrap();
    let out = pull(&via_hub, &hub, &format!("{}/cache", hub.url), "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = tree(&via_hub.join("state/store"), &closure);
    assert!(reference.len() > closure.len());

    let garage = Garage::start().unwrap();
    garage.create_bucket("nix-cache").unwrap();
    let uploaded = garage.upload_dir("nix-cache", &hub.root.join("cache")).unwrap();
    assert!(uploaded > 2 * closure.len(), "{uploaded} files uploaded");
    let substituter = garage.substituter("nix-cache");
    let key = &garage.credentials;

    let via_s3 = work.path().join("via-s3");
    std::fs::create_dir_all(&via_s3).unwrap();
    let creds = credentials_file(&via_s3, &key.access_key_id, &key.secret_access_key);
    let out = pull(&via_s3, &hub, &substituter, &creds);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(&key.secret_access_key), "the secret key is in the output");
    assert_eq!(tree(&via_s3.join("state/store"), &closure), reference, "the S3 pull differs from the hub's");

    // Wrong credentials: one error naming the endpoint and the bucket; nothing written.
    let wrong = work.path().join("wrong-key");
    std::fs::create_dir_all(&wrong).unwrap();
    let bad = "0000000000000000000000000000000000000000000000000000000000000000";
    let creds = credentials_file(&wrong, &key.access_key_id, bad);
    let out = pull(&wrong, &hub, &substituter, &creds);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let endpoint = format!("S3 endpoint {} bucket nix-cache answered ", garage.s3_endpoint);
    assert!(stderr.contains(&endpoint), "{stderr}");
    assert!(stderr.contains("could not be fetched from any substituter"), "{stderr}");
    assert!(!stderr.contains(bad), "{stderr}");
    assert_eq!(stderr.matches("flox: ").count(), 1, "one error: {stderr}");
    assert!(store_entries(&wrong).is_empty(), "{:?}", store_entries(&wrong));

    // A bucket that does not exist.
    let missing = work.path().join("missing-bucket");
    std::fs::create_dir_all(&missing).unwrap();
    let creds = credentials_file(&missing, &key.access_key_id, &key.secret_access_key);
    let out = pull(&missing, &hub, &garage.substituter("no-such-bucket"), &creds);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("S3 endpoint {} bucket no-such-bucket answered NoSuchBucket", garage.s3_endpoint)),
        "{stderr}"
    );
    assert!(store_entries(&missing).is_empty());

    // An S3 endpoint that refuses connections: the error names the object, never the presigned
    // URL (it carries a signature).
    let closed = imageless_e2e::bad_peers::closed_port_url();
    let port = closed.trim_start_matches("http://127.0.0.1:").trim_end_matches("/cache");
    let down = format!("s3://nix-cache?region=garage&endpoint=127.0.0.1:{port}&scheme=http&addressing-style=path");
    let out = pull(&missing, &hub, &down, &creds);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("down: GET s3://nix-cache/nix-cache-info failed: "), "{stderr}");
    assert!(!stderr.contains("X-Amz-") && !stderr.contains(&key.access_key_id), "{stderr}");

    // A credentials file without the profile the URL names.
    let out = pull(&missing, &hub, &format!("{substituter}&profile=prod"), &creds);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("profile [prod] has no aws_access_key_id") && stderr.contains("[default]"), "{stderr}");
}
