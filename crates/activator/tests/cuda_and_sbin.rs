//! CUDA detection (`LD_FLOXLIB_FILES_PATH`, dev mode, `options.cuda-detection`) against a fake
//! system root with a real device node, real shared libraries and a cache written by the real
//! ldconfig; and `options.activate.add-sbin`.
mod support;

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use imageless_core::activation::Mode;
use support::*;

const LDCONFIG: &str = "/usr/sbin/ldconfig";

/// A system root with `dev/nvidia0` (a character device, as the NVIDIA toolkit mounts it when
/// `with_device`), two driver libraries and one other library in `usr/lib/gpu`, and
/// `etc/ld.so.cache` made by ldconfig.
struct FakeSystem {
    root: tempfile::TempDir,
}

impl FakeSystem {
    fn new(with_device: bool) -> FakeSystem {
        let root = tempfile::tempdir().unwrap();
        let lib_dir = root.path().join("usr/lib/gpu");
        for dir in [root.path().join("dev"), root.path().join("etc"), lib_dir.clone()] {
            fs::create_dir_all(dir).unwrap();
        }
        if with_device {
            let node = CString::new(root.path().join("dev/nvidia0").to_str().unwrap()).unwrap();
            // SAFETY: a valid path; makedev(195, 0) is the first NVIDIA GPU.
            let made = unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(195, 0)) };
            assert_eq!(made, 0, "mknod dev/nvidia0: {}", std::io::Error::last_os_error());
        }
        for soname in ["libcuda.so.1", "libnvidia-ml.so.1", "libother.so.1"] {
            shared_library(&lib_dir.join(soname), soname);
        }
        fs::write(root.path().join("etc/ld.so.conf"), format!("{}\n", lib_dir.display())).unwrap();
        // -X: only write the cache, never touch links (ldconfig also scans the host's trusted dirs).
        let status = Command::new(LDCONFIG)
            .arg("-X")
            .arg("-C")
            .arg(root.path().join("etc/ld.so.cache"))
            .arg("-f")
            .arg(root.path().join("etc/ld.so.conf"))
            .status()
            .unwrap();
        assert!(status.success(), "ldconfig");
        FakeSystem { root }
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    /// What Flox's 0800_cuda.sh computes: ldconfig's listing filtered by the library pattern.
    fn flox_listing(&self) -> String {
        let output = Command::new(LDCONFIG)
            .arg("--print-cache")
            .arg("-C")
            .arg(self.path().join("etc/ld.so.cache"))
            .output()
            .unwrap();
        let listing = String::from_utf8(output.stdout).unwrap();
        let libraries: Vec<&str> = listing
            .lines()
            .filter_map(|line| {
                let name = line.split_whitespace().next()?;
                let path = line.split_whitespace().last()?;
                let family = name.strip_prefix("lib")?;
                let cuda = ["cuda", "nvidia", "dxcore"].iter().any(|f| family.starts_with(f));
                (cuda && name.contains(".so")).then_some(path)
            })
            .collect();
        libraries.join(":")
    }
}

fn shared_library(path: &Path, soname: &str) {
    let status = Command::new("cc")
        .args(["-shared", "-nostdlib", &format!("-Wl,-soname,{soname}"), "-o"])
        .arg(path)
        .args(["-x", "c", "/dev/null"])
        .status()
        .expect("cc builds the fake driver libraries");
    assert!(status.success());
}

fn activated_env(test: &TestEnv, system: &Path) -> std::collections::BTreeMap<String, String> {
    let root = system.to_str().unwrap();
    test.command_env(&mut test.command_with(&["--system-root", root], &["env", "-0"]))
}

#[test]
fn gpu_device_present_lists_the_cache_libraries_in_dev_mode() {
    let system = FakeSystem::new(true);
    let test = TestEnv::new(Mode::Dev, &[], None);
    let env = activated_env(&test, system.path());
    let want = system.flox_listing();
    assert!(want.contains("/usr/lib/gpu/libcuda.so.1") && want.contains("libnvidia-ml.so.1"), "{want}");
    assert!(!want.contains("libother"));
    assert_eq!(env["LD_FLOXLIB_FILES_PATH"], want);

    // An inherited value is kept in front.
    let root = system.path().to_str().unwrap();
    let env = test.command_env(
        test.command_with(&["--system-root", root], &["env", "-0"]).env("LD_FLOXLIB_FILES_PATH", "/mine.so"),
    );
    assert_eq!(env["LD_FLOXLIB_FILES_PATH"], format!("/mine.so:{want}"));
}

#[test]
fn no_device_option_off_or_run_mode_detect_nothing() {
    let without_device = FakeSystem::new(false);
    let test = TestEnv::new(Mode::Dev, &[], None);
    assert!(!activated_env(&test, without_device.path()).contains_key("LD_FLOXLIB_FILES_PATH"));

    let system = FakeSystem::new(true);
    let off = TestEnv::new(Mode::Dev, &[], None).edit_data(|data| data.cuda_detection = false);
    assert!(!activated_env(&off, system.path()).contains_key("LD_FLOXLIB_FILES_PATH"));

    let run = TestEnv::new(Mode::Run, &[], None);
    assert!(!activated_env(&run, system.path()).contains_key("LD_FLOXLIB_FILES_PATH"));
}

#[test]
fn dxg_device_and_opengl_driver_fallback() {
    // WSL's /dev/dxg, no cache entry: the libraries under /run/opengl-driver (NixOS hosts).
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("dev")).unwrap();
    fs::write(root.path().join("dev/dxg"), "").unwrap();
    let driver: PathBuf = root.path().join("run/opengl-driver/lib");
    fs::create_dir_all(&driver).unwrap();
    for name in ["libcuda.so.1", "libdxcore.so", "libGL.so.1"] {
        fs::write(driver.join(name), "").unwrap();
    }
    std::os::unix::fs::symlink(driver.join("libcuda.so.1"), driver.join("libcuda.so")).unwrap();
    let test = TestEnv::new(Mode::Dev, &[], None);
    let env = activated_env(&test, root.path());
    assert_eq!(
        env["LD_FLOXLIB_FILES_PATH"],
        format!("{0}/libcuda.so.1:{0}/libdxcore.so", driver.display()),
        "regular files only, as `find -type f`"
    );
}

#[test]
fn add_sbin_puts_the_environments_sbin_on_path() {
    let test = TestEnv::new(Mode::Run, &[], None).edit_data(|data| data.add_sbin = true);
    fs::create_dir_all(test.env_dir.join("sbin")).unwrap();
    write_executable(&test.env_dir.join("sbin/daemon-tool"), "#!/bin/sh\necho from-sbin\n");
    let env = test.command_env(&mut test.command(&["env", "-0"]));
    let flox_env = test.env_str();
    assert_eq!(env["PATH"], format!("{flox_env}/bin:{flox_env}/sbin:{}:/usr/bin:/bin", test.image_bin.display()));
    assert_eq!(env["_FLOX_ENV_DIRS_ADD_SBIN"], flox_env);
    assert_eq!(test.run(&["daemon-tool"]).stdout, b"from-sbin\n");

    // Default off: sbin is not searched.
    let test = TestEnv::new(Mode::Run, &[], None);
    fs::create_dir_all(test.env_dir.join("sbin")).unwrap();
    write_executable(&test.env_dir.join("sbin/daemon-tool"), "#!/bin/sh\necho from-sbin\n");
    let env = test.command_env(&mut test.command(&["env", "-0"]));
    assert_eq!(env["_FLOX_ENV_DIRS_ADD_SBIN"], "empty");
    assert_eq!(test.run(&["daemon-tool"]).status.code(), Some(127));
}
