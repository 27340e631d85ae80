//! End to end: `flox/large` (300+ store paths, 200+ MB) and `flox/xlarge` (1,000+ paths, 1.5+
//! GB) on containerd 1.6.20, 1.7.24 and 2.1.9. The closure reaches the container through the node's closure view: at most 3 mounts
//! under /nix/store in the container whatever the closure's size, exactly the closure visible,
//! one view per environment on the node, a constant number of host mounts per container, and
//! the host mount table as before once the pods are gone.
use std::collections::BTreeSet;
use std::time::Duration;

use imageless_e2e::flox_node::{self as support, flox_pod, FloxNode};
use imageless_e2e::ContainerdVersion;

const EMPTY: &str = "flox/empty:1.0.0";
const PODS: usize = 20;

fn closure_names(node: &FloxNode, env: &str) -> BTreeSet<String> {
    let world = node.world();
    let gen = world["environments"][env]["live_generation"].to_string();
    world["environments"][env]["generations"][gen.as_str()]["closure"]
        .as_array()
        .unwrap_or_else(|| panic!("world.json has no closure for {env}: rebuild the world (cargo xtask world)"))
        .iter()
        .map(|p| p.as_str().unwrap().trim_start_matches("/nix/store/").to_string())
        .collect()
}

/// Mount points of a mountinfo text (field 5).
fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).map(String::from).collect()
}

fn under_store(point: &str) -> bool {
    point == "/nix/store" || point.starts_with("/nix/store/")
}

/// Host mounts this node is responsible for: below containerd's directory (rootfs, shm), of
/// the node's state root (views, overlays) and anything mounted under /nix/store.
fn node_mounts(node: &FloxNode) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state = node.state_root.display().to_string();
    let mut points: Vec<String> = node.containerd.mounts_below().iter().map(|p| p.display().to_string()).collect();
    points.extend(mount_points(&text).into_iter().filter(|p| under_store(p) || p.starts_with(&state)));
    points.extend(text.lines().filter(|l| l.contains(&state)).map(String::from));
    points
}

fn views(node: &FloxNode) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(node.state_root.join("views"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn large_environment(version: ContainerdVersion) {
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("large_env {version}: {what} at {:.1} s", t0.elapsed().as_secs_f64());
    let node = FloxNode::start(version);
    phase("node started");
    let large = closure_names(&node, "flox/large");
    assert!(large.len() >= 300, "flox/large has {} store paths; the world is outdated", large.len());
    let idle = node_mounts(&node);
    support::block_on(async {
        // Another environment realized on this host first: its own paths must stay hidden.
        let hello = flox_pod("hello", &[("flox.dev/environment", "flox/hello")], EMPTY, &["hello"]);
        let (code, out, err) = node.run_to_end(&hello, &[]).await.unwrap();
        assert_eq!((code, out.trim()), (0, "Hello, world! (hello 2.12)"), "{err}");
        let others: Vec<String> = closure_names(&node, "flox/hello").difference(&large).cloned().collect();
        assert!(!others.is_empty());
        for o in &others {
            assert!(node.store_dir().join(o).exists(), "{o} is in the node store");
        }
        phase("flox/hello ran");
        let before = node_mounts(&node);
        assert_eq!(before, idle, "a finished pod leaves no host mount");

        let lib = large.iter().find(|n| n.contains("-liblarge123-")).expect("liblarge123").clone();
        let lib_file = format!("/nix/store/{lib}/lib/liblarge123.so.1.0");
        let probe =
            format!("cat /proc/self/mountinfo; echo ---; ls /nix/store; echo ---; large-app; wc -c < {lib_file}");
        let pod = flox_pod("large", &[("flox.dev/environment", "flox/large")], EMPTY, &["bash", "-c", &probe]);
        let (code, out, err) = node.run_to_end(&pod, &[]).await.unwrap();
        assert_eq!(code, 0, "{err}");
        phase("flox/large ran cold");
        let sections: Vec<&str> = out.split("---\n").collect();
        assert_eq!(sections.len(), 3, "{out}");
        let store_mounts: Vec<String> = mount_points(sections[0]).into_iter().filter(|p| under_store(p)).collect();
        assert!(
            !store_mounts.is_empty() && store_mounts.len() <= 3,
            "mounts under /nix/store in the container: {store_mounts:?}"
        );
        let seen: BTreeSet<String> = sections[1].lines().map(String::from).collect();
        let missing: Vec<_> = large.difference(&seen).collect();
        let extra: Vec<_> = seen.difference(&large).collect();
        assert!(missing.is_empty() && extra.is_empty(), "closure missing {missing:?}, not in the closure {extra:?}");
        for o in &others {
            assert!(!seen.contains(o), "{o} of flox/hello is visible");
        }
        let mut rest = sections[2].lines();
        assert_eq!(rest.next(), Some("large-app: 250 libraries"), "{out}");
        let size = std::fs::metadata(node.store_dir().join(&lib).join("lib/liblarge123.so.1.0")).unwrap().len();
        assert_eq!(rest.next().map(str::trim), Some(size.to_string().as_str()), "{out}");
        assert_eq!(views(&node).len(), 2, "one view per environment: {:?}", views(&node));
        assert_eq!(node_mounts(&node), before, "a finished pod leaves no host mount");
        // The sandbox's prefetch unpacked the closure into the view alone, then made the
        // store's entries from it after publishing (`store_dir` waits until it is done): every
        // path is in the store, its files the view's own inodes, and no environment is left
        // marked as waiting for them.
        let store = node.store_dir();
        let missing: Vec<_> = large.iter().filter(|n| !store.join(n).exists()).collect();
        assert!(missing.is_empty(), "not in the node store: {missing:?}");
        let rel = format!("{lib}/lib/liblarge123.so.1.0");
        let ino = |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(p).unwrap());
        let in_view = views(&node)
            .iter()
            .map(|v| node.state_root.join("views").join(v).join("store").join(&rel))
            .find(|p| p.exists())
            .expect("a view holds liblarge123");
        assert_eq!(ino(&in_view), ino(&store.join(&rel)), "the store's file is the view's");
        let marked: Vec<_> = std::fs::read_dir(node.state_root.join("envs"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("store-pending").exists())
            .map(|e| e.file_name())
            .collect();
        assert!(marked.is_empty(), "environments still marked: {marked:?}");

        // One running container, then 20: each adds the same few host mounts, none per path.
        let sleeper = |i: usize| {
            flox_pod(
                &format!("large-{i}"),
                &[("flox.dev/environment", "flox/large")],
                EMPTY,
                &["bash", "-c", "trap 'exit 0' TERM; sleep 600 & wait"],
            )
        };
        let first = node.run(&sleeper(0), &[]).await.expect("flox/large pod starts");
        let per_pod = node_mounts(&node).len() - before.len();
        let mut pods = vec![first];
        for i in 1..PODS {
            pods.push(node.run(&sleeper(i), &[]).await.expect("flox/large pod starts"));
        }
        phase("20 flox/large pods running");
        let added = node_mounts(&node).len() - before.len();
        eprintln!("host mounts: {per_pod} for one flox/large pod, {added} for {PODS} (closure: {} paths)", large.len());
        assert!(per_pod <= 4, "one pod adds {per_pod} host mounts");
        assert!(added <= PODS * per_pod, "{PODS} pods add {added} host mounts, one adds {per_pod}");
        let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mount_points(&host).iter().any(|p| under_store(p)), "no store mount on the host");
        assert_eq!(views(&node).len(), 2, "still one view per environment");
        for pod in pods {
            pod.remove().await.unwrap();
        }
        phase("20 pods removed");

        // flox/xlarge (1,000+ paths, 1.5+ GB): the same few mounts, exactly its closure.
        let xlarge = closure_names(&node, "flox/xlarge");
        assert!(xlarge.len() >= 1000, "flox/xlarge has {} store paths; the world is outdated", xlarge.len());
        let probe = "cat /proc/self/mountinfo; echo ---; ls /nix/store; echo ---; xlarge-app";
        let pod = flox_pod("xlarge", &[("flox.dev/environment", "flox/xlarge")], EMPTY, &["bash", "-c", probe]);
        let (code, out, err) = node.run_to_end(&pod, &[]).await.unwrap();
        assert_eq!(code, 0, "{err}");
        phase("flox/xlarge ran cold");
        let sections: Vec<&str> = out.split("---\n").collect();
        assert_eq!(sections.len(), 3, "{}", &out[..out.len().min(4000)]);
        let store_mounts: Vec<String> = mount_points(sections[0]).into_iter().filter(|p| under_store(p)).collect();
        assert!(
            !store_mounts.is_empty() && store_mounts.len() <= 3,
            "mounts under /nix/store in the xlarge container: {store_mounts:?}"
        );
        let seen: BTreeSet<String> = sections[1].lines().map(String::from).collect();
        let missing: Vec<_> = xlarge.difference(&seen).collect();
        let extra: Vec<_> = seen.difference(&xlarge).collect();
        assert!(missing.is_empty() && extra.is_empty(), "closure missing {missing:?}, not in the closure {extra:?}");
        assert_eq!(
            sections[2].trim(),
            format!("xlarge-app: {} libraries", xlarge.iter().filter(|n| n.contains("-libxlarge")).count()),
            "{}",
            sections[2]
        );
        let sleeper = flox_pod(
            "xlarge-sleeper",
            &[("flox.dev/environment", "flox/xlarge")],
            EMPTY,
            &["bash", "-c", "trap 'exit 0' TERM; sleep 600 & wait"],
        );
        let xl_pod = node.run(&sleeper, &[]).await.expect("flox/xlarge pod starts");
        let xl_per_pod = node_mounts(&node).len() - before.len();
        assert_eq!(xl_per_pod, per_pod, "host mounts of an xlarge pod vs a large pod");
        xl_pod.remove().await.unwrap();
        assert_eq!(views(&node).len(), 3, "one view per environment: {:?}", views(&node));
        assert_eq!(node_mounts(&node), before, "a finished pod leaves no host mount");
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(node_mounts(&node), idle, "host mount table as before");
    let leftovers = std::fs::read_dir(node.state_root.join("containers")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "per-container state removed");

    // `imageless gc` removes the unused views with their environments.
    let out = std::process::Command::new(support::imageless())
        .args(["gc", "--config"])
        .arg(&node.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(views(&node).is_empty(), "views left after gc: {:?}", views(&node));
}

#[test]
fn large_environment_on_containerd_1_6_20() {
    large_environment(ContainerdVersion::V1_6);
}

#[test]
fn large_environment_on_containerd_1_7_24() {
    large_environment(ContainerdVersion::V1_7);
}

#[test]
fn large_environment_on_containerd_2_1_9() {
    large_environment(ContainerdVersion::V2_1);
}
