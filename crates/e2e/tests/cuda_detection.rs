//! End to end: CUDA detection as Flox's dev-mode activation does it, on a GPU node as the
//! NVIDIA toolkit or CDI leaves it — a `/dev/nvidia0` device node and driver libraries listed
//! in the container's `/etc/ld.so.cache`. Here the device node is a real character device made
//! on the host and the libraries are real shared objects in a cache written by the real
//! ldconfig, all bound in with hostPath volumes (no GPU needed). The main process and an exec
//! both get `LD_FLOXLIB_FILES_PATH`; without the device, or in run mode, nobody does.

use std::ffi::CString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use imageless_e2e::flox_node::{self as support, FloxNode};
use imageless_e2e::ContainerdVersion;

/// `root/dev-nvidia0` (char 195:0), `root/usr/lib/gpu/{libcuda.so.1,libnvidia-ml.so.1,libother.so.1}`
/// and `root/etc/ld.so.cache` listing them at their container paths (`ldconfig -r root`).
fn fake_gpu_node(root: &Path) {
    let gpu = root.join("usr/lib/gpu");
    std::fs::create_dir_all(&gpu).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let node = CString::new(root.join("dev-nvidia0").to_str().unwrap()).unwrap();
    // SAFETY: a valid path; 195:0 is the first NVIDIA GPU's device number.
    let made = unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(195, 0)) };
    assert_eq!(made, 0, "mknod: {}", std::io::Error::last_os_error());
    for soname in ["libcuda.so.1", "libnvidia-ml.so.1", "libother.so.1"] {
        let status = Command::new("cc")
            .args(["-shared", "-nostdlib", &format!("-Wl,-soname,{soname}"), "-o"])
            .arg(gpu.join(soname))
            .args(["-x", "c", "/dev/null"])
            .status()
            .expect("cc builds the fake driver libraries");
        assert!(status.success());
    }
    std::fs::write(root.join("etc/ld.so.conf"), "/usr/lib/gpu\n").unwrap();
    let status = Command::new("/usr/sbin/ldconfig").arg("-X").arg("-r").arg(root).status().unwrap();
    assert!(status.success(), "ldconfig -r");
}

fn gpu_pod(name: &str, root: &Path, mode: &str, with_device: bool) -> String {
    let device_volume = if with_device {
        format!("  - {{name: dev, hostPath: {{path: {:?}, type: CharDevice}}}}\n", root.join("dev-nvidia0"))
    } else {
        String::new()
    };
    let device_mount = if with_device { "    - {name: dev, mountPath: /dev/nvidia0}\n" } else { "" };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  annotations:
    flox.dev/environment: "flox/hooks"
    flox.dev/activate-mode: "{mode}"
spec:
  runtimeClassName: flox
  volumes:
{device_volume}  - {{name: cache, hostPath: {{path: {cache:?}, type: File}}}}
  - {{name: gpu, hostPath: {{path: {gpu:?}, type: Directory}}}}
  containers:
  - name: app
    image: busybox:local
    command: ["sh", "-c", "echo L=$LD_FLOXLIB_FILES_PATH; exec sleep 300"]
    volumeMounts:
{device_mount}    - {{name: cache, mountPath: /etc/ld.so.cache, readOnly: true}}
    - {{name: gpu, mountPath: /usr/lib/gpu, readOnly: true}}
"#,
        cache = root.join("etc/ld.so.cache"),
        gpu = root.join("usr/lib/gpu"),
    )
}

async fn detected(node: &FloxNode, root: &Path, name: &str, mode: &str, with_device: bool) -> (String, String) {
    let pod = node.run(&gpu_pod(name, root, mode, with_device), &[]).await.expect("gpu pod starts");
    let exec = pod
        .exec_sync(
            None,
            vec!["sh".into(), "-c".into(), "echo L=$LD_FLOXLIB_FILES_PATH".into()],
            Some(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    let main = pod.stdout(None).unwrap();
    pod.remove().await.unwrap();
    (
        main.lines().find(|l| l.starts_with("L=")).unwrap_or("").to_string(),
        String::from_utf8_lossy(&exec.stdout).trim().to_string(),
    )
}

fn scenarios(version: ContainerdVersion) {
    let node = FloxNode::start(version);
    let root = node.dir.path().join("gpu-root");
    fake_gpu_node(&root);
    support::block_on(async {
        let (main, exec) = detected(&node, &root, "gpu-dev", "dev", true).await;
        // The order is the cache's (ldconfig --print-cache), whatever it is.
        for got in [&main, &exec] {
            let mut libs: Vec<&str> = got.trim_start_matches("L=").split(':').collect();
            libs.sort();
            assert_eq!(libs, ["/usr/lib/gpu/libcuda.so.1", "/usr/lib/gpu/libnvidia-ml.so.1"], "{got}");
        }
        assert_eq!(main, exec, "the exec (attach) detects the same libraries");
        let (main, exec) = detected(&node, &root, "gpu-nodevice", "dev", false).await;
        assert_eq!((main.as_str(), exec.as_str()), ("L=", "L="), "no device, no detection");
        let (main, exec) = detected(&node, &root, "gpu-run", "run", true).await;
        assert_eq!((main.as_str(), exec.as_str()), ("L=", "L="), "run mode has no CUDA detection, as in Flox");
    });
}

#[test]
fn cuda_detection_on_containerd_1_7_24() {
    scenarios(ContainerdVersion::V1_7);
}

#[test]
fn cuda_detection_on_containerd_2_1_9() {
    scenarios(ContainerdVersion::V2_1);
}
