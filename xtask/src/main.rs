//! `cargo xtask`: the project's entry points for people and CI.
//!
//! - `cargo xtask test`  — installs what is needed, builds, builds the package world and the
//!   installer image, runs every unit test and the end-to-end suite on containerd 1.6.20,
//!   1.7.24 and 2.1.9.
//! - `cargo xtask demo`  — the docs' echoip pod on a private containerd and a local hub.
//! - `cargo xtask bench` — start-time and overhead figures against plain runc and `nix copy`.
//! - `cargo xtask build` — just the binaries (debug) and the static activator.
//! - `cargo xtask image` — the installer image as a reproducible OCI archive,
//!   target/image/imageless-installer.tar (static binaries; see `image.rs`).
mod bench_disk;
mod image;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the binaries and the static activator.
    Build,
    /// Build (or reuse) the package world and the local hub root.
    World,
    /// Unit tests and end-to-end tests on every supported containerd.
    Test {
        /// Skip the machine setup (apt, Nix config, containerd downloads).
        #[arg(long)]
        no_setup: bool,
        /// Extra arguments for the end-to-end `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        e2e_args: Vec<String>,
    },
    /// Run the docs' echoip pod end to end and tear everything down.
    Demo,
    /// Benchmarks (not part of CI): prints a table and writes target/bench.json.
    Bench,
    /// The installer image: static binaries in an OCI archive, target/image/imageless-installer.tar.
    Image {
        /// Package the (static) binaries in this directory instead of building them.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {}", describe(cmd));
    let status = cmd.current_dir(root()).status().with_context(|| format!("running {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

const ACTIVATOR_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Paths the e2e tests and the demo read from the environment.
pub struct Layout {
    pub bin_dir: PathBuf,
    pub activator: PathBuf,
    pub hub_root: PathBuf,
    pub images: PathBuf,
}

fn layout() -> Layout {
    let r = root();
    Layout {
        bin_dir: r.join("target/debug"),
        activator: r.join(format!("target/{ACTIVATOR_TARGET}/release/flox-activate")),
        hub_root: r.join(".work/hub"),
        images: r.join(".work/images"),
    }
}

fn setup() -> Result<()> {
    run(Command::new("bash").arg("scripts/setup-machine.sh"))?;
    run(Command::new("bash").arg("scripts/fetch-containerd.sh"))?;
    run(Command::new("bash").arg("scripts/fetch-kubectl.sh"))
}

fn build() -> Result<()> {
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    // The activator runs in images without libc: static glibc build. With an explicit
    // --target, RUSTFLAGS apply to the target only, not to build scripts.
    run(cargo()
        .args(["build", "-p", "flox-activate", "--release", "--target", ACTIVATOR_TARGET])
        .env("RUSTFLAGS", "-C target-feature=+crt-static"))
}

/// The binaries the shim runs on every runc call of every pod (flox-runc), or once per pod (the
/// launcher). They are built static and not position-independent, so nothing is relocated at
/// start: as a static PIE, flox-runc spent about 1.4 ms of CPU per call faulting in and
/// relocating 700 KB of pointers, more than all of its work for a warm create. (Debian's own
/// runc is a non-PIE executable too.) `imageless`, which also serves the hub on the network,
/// stays a static PIE and keeps ASLR.
const PER_CALL_BINARIES: [&str; 2] = ["flox-runc", "containerd-shim-flox-v2"];

/// The four binaries the installer image ships, statically linked (static glibc: they run on any
/// x86_64 Linux host, and in the image, which has no libc), gathered in target/image/bin, which
/// is returned.
fn build_static() -> Result<PathBuf> {
    let static_flags = "-C target-feature=+crt-static";
    run(cargo()
        .args(["build", "--release", "--target", ACTIVATOR_TARGET])
        .args(image::BINARIES.iter().filter(|b| !PER_CALL_BINARIES.contains(b)).flat_map(|b| ["-p", b]))
        .env("RUSTFLAGS", static_flags))?;
    // A target dir of their own: other RUSTFLAGS in the same one would rebuild the shared
    // dependencies back and forth.
    let no_pie_dir = root().join("target/no-pie");
    run(cargo()
        .args(["build", "--release", "--target", ACTIVATOR_TARGET])
        .args(PER_CALL_BINARIES.iter().flat_map(|b| ["-p", b]))
        .env("CARGO_TARGET_DIR", &no_pie_dir)
        .env("RUSTFLAGS", format!("{static_flags} -C relocation-model=static")))?;
    let out = root().join("target/image/bin");
    std::fs::create_dir_all(&out)?;
    for name in image::BINARIES {
        let built = if PER_CALL_BINARIES.contains(&name) { no_pie_dir.clone() } else { root().join("target") };
        let from = built.join(ACTIVATOR_TARGET).join("release").join(name);
        let to = out.join(name);
        // A new file, not an overwrite: a running copy of the old one keeps its inode.
        let _ = std::fs::remove_file(&to);
        std::fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(out)
}

/// `cargo xtask image`: builds, checks each binary is static and runs in an empty root, writes the
/// archive, then writes it a second time and checks the bytes are the same.
fn image(bin_dir: Option<PathBuf>) -> Result<()> {
    let bins = match bin_dir {
        Some(dir) => dir,
        None => build_static()?,
    };
    for name in image::BINARIES {
        image::check_static(&bins.join(name))?;
        eprintln!("xtask: {name}: static, runs in an empty root");
    }
    let out = root().join("target/image/imageless-installer.tar");
    let tag = env!("CARGO_PKG_VERSION");
    image::write_archive(&bins, tag, &out)?;
    let again = root().join("target/image/.imageless-installer.second.tar");
    image::write_archive(&bins, tag, &again)?;
    let same = std::fs::read(&out)? == std::fs::read(&again)?;
    std::fs::remove_file(&again)?;
    if !same {
        bail!("two builds of {} differ", out.display());
    }
    let size = std::fs::metadata(&out)?.len();
    println!("{} ({} MiB, {}:{tag}; reproducible)", out.display(), size / (1 << 20), image::IMAGE_NAME);
    Ok(())
}

fn world() -> Result<()> {
    let l = layout();
    run(Command::new("bash").arg("world/build.sh").arg(&l.hub_root).arg(l.bin_dir.join("imageless")))?;
    run(Command::new("bash").arg("scripts/images/build.sh").arg(&l.images))
}

fn with_layout(cmd: &mut Command) -> &mut Command {
    let l = layout();
    cmd.env("IMAGELESS_BIN_DIR", &l.bin_dir)
        .env("IMAGELESS_ACTIVATOR", &l.activator)
        .env("IMAGELESS_HUB_ROOT", &l.hub_root)
        .env("IMAGELESS_IMAGES", &l.images)
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Build => build(),
        Cmd::World => {
            build()?;
            world()
        }
        Cmd::Test { no_setup, e2e_args } => {
            if !no_setup {
                setup()?;
            }
            build()?;
            world()?;
            // The installer image archive: the e2e suite runs the DaemonSet from it
            // (crates/e2e/tests/daemonset_install.rs).
            image(None)?;
            // Unit and integration tests of every crate but the e2e suite, in parallel.
            run(with_layout(&mut cargo()).args([
                "test",
                "--no-fail-fast",
                "--workspace",
                "--exclude",
                "imageless-e2e",
            ]))?;
            // End-to-end: each test starts its own containerd; one at a time on 2 cores.
            run(with_layout(&mut cargo())
                .args(["test", "--no-fail-fast", "-p", "imageless-e2e", "--", "--test-threads=1"])
                .args(&e2e_args))
        }
        Cmd::Demo => {
            setup()?;
            build()?;
            world()?;
            run(with_layout(&mut cargo()).args(["run", "--quiet", "-p", "imageless-e2e", "--bin", "demo"]))
        }
        Cmd::Image { bin_dir } => image(bin_dir),
        Cmd::Bench => {
            setup()?;
            build()?;
            world()?;
            // The measured binaries are the ones the installer image ships (static, see
            // build_static). The bench itself is a release build too: it runs the node's fetch
            // client in-process (P8, P9), and its CRI client and timers then add less to both
            // sides of each ratio.
            let bins = build_static()?;
            // Built first: the bench's node runs on a disk of its own (see bench_disk).
            run(with_layout(&mut cargo()).args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "imageless-bench",
                "--bin",
                "bench",
            ]))?;
            let disk = bench_disk::BenchDisk::prepare()?;
            let mut cmd = cargo();
            with_layout(&mut cmd)
                .args(["run", "--quiet", "--release", "-p", "imageless-bench", "--bin", "bench"])
                .env("IMAGELESS_BENCH_BIN_DIR", bins);
            if let Some(disk) = &disk {
                cmd.env("TMPDIR", disk.dir());
            }
            run(&mut cmd)
        }
    }
}
