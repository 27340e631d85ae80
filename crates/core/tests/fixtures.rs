//! Real lockfiles and floxmeta data from ../shared/fixtures (beside the repository) (copied verbatim from flox/flox
//! and one real-world repository; see the READMEs there) through the parsers, with the
//! expected selections written out by hand from reading the JSON.

use std::path::PathBuf;

use imageless_core::generations::{GenerationsError, GenerationsMetadata};
use imageless_core::lockfile::{Lockfile, LockfileError, ManifestVersion, SelectError};
use imageless_core::system::System;

/// Fixture root; `IMAGELESS_FIXTURES` overrides it. Missing fixtures fail the test rather
/// than skip it.
fn fixtures() -> PathBuf {
    std::env::var_os("IMAGELESS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures")))
}

fn lock_bytes(name: &str) -> Vec<u8> {
    let path = fixtures().join("flox-lockfiles").join(name).join("manifest.lock");
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {} unreadable: {e}", path.display()))
}

fn lock(name: &str) -> Lockfile {
    Lockfile::parse(&lock_bytes(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// (install_id, output, store path, priority) of a selection, for compact assertions.
fn selected(name: &str, system: System) -> Vec<(String, String, String, u64)> {
    lock(name)
        .select(system)
        .unwrap_or_else(|e| panic!("{name} on {system}: {e}"))
        .outputs
        .into_iter()
        .map(|o| (o.install_id, o.output, o.store_path.to_string(), o.priority))
        .collect()
}

fn row(install_id: &str, output: &str, path: &str, priority: u64) -> (String, String, String, u64) {
    (install_id.into(), output.into(), path.into(), priority)
}

/// Every fixture lockfile either parses and selects for every system it is locked for, or
/// fails with the exact error the Flox CLI's rules call for.
#[test]
fn every_fixture_lockfile_parses_or_fails_as_expected() {
    let dir = fixtures().join("flox-lockfiles");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.lock").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 39, "expected the 39 fixture lockfiles, found {}", names.len());
    let mut parsed = 0;
    for name in &names {
        let result = Lockfile::parse(&lock_bytes(name));
        match name.as_str() {
            "hist-empty-v0" | "hist-glibc-v0-x86_64-linux" => {
                let err = result.unwrap_err();
                assert_eq!(err, LockfileError::UnsupportedLockfileVersion("0".into()));
                assert_eq!(err.to_string(), "lockfile-version 0 is not supported; this node reads lockfile-version 1");
            }
            // Manifest `version: 2` was short-lived; the current CLI rejects it too.
            "hist-bash-manifest-v2-all" => {
                let err = result.unwrap_err();
                assert_eq!(err, LockfileError::UnsupportedManifestVersion("2".into()));
                assert!(err
                    .to_string()
                    .starts_with("manifest version 2 is not supported; accepted: version 1 or schema-version 1.10.0"));
            }
            _ => {
                let lockfile = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                parsed += 1;
                // Selecting for every system the lock has entries for either works or is
                // refused by one of the CLI's system checks; store paths are all valid.
                for system in System::ALL {
                    match lockfile.select(system) {
                        Ok(selection) => {
                            for output in &selection.outputs {
                                assert!(lockfile
                                    .packages
                                    .iter()
                                    .any(|p| p.install_id() == output.install_id && p.system() == system.as_str()));
                            }
                        }
                        Err(SelectError::SystemNotSupported { .. } | SelectError::NotLockedForSystem { .. }) => {}
                        Err(other) => panic!("{name} on {system}: {other}"),
                    }
                }
                if name != "buildenv-vars-cycle" {
                    lockfile.vars_in_order().unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            }
        }
    }
    assert_eq!(parsed, names.len() - 3);
}

#[test]
fn legacy_v1_manifest_links_all_outputs_with_others_ranked_behind() {
    // v1-curl-hello, x86_64-linux: curl's outputs_to_install = [bin, bin, man, man]; every
    // other output (even `out`) gets 1000 × 5 + a counter shared across the environment.
    assert_eq!(lock("v1-curl-hello").manifest.version, ManifestVersion::V1);
    assert_eq!(
        selected("v1-curl-hello", System::X86_64Linux),
        vec![
            row("curl", "bin", "/nix/store/6j3b51rypymg5inhr27rcc7in5cxbvjz-curl-8.18.0-bin", 5),
            row("curl", "man", "/nix/store/gxspg74jdwaxdb80giixl4517nw6q139-curl-8.18.0-man", 5),
            row("curl", "debug", "/nix/store/9gvh3ymdh38n7lkbjd61cwx6ff510wpb-curl-8.18.0-debug", 5000),
            row("curl", "dev", "/nix/store/m2b7j4s1jlhlnpxhpf2sjwvd2nn0x8hx-curl-8.18.0-dev", 5001),
            row("curl", "devdoc", "/nix/store/r2xswgdxf2z7h9vnirhzkzj4k721nbhh-curl-8.18.0-devdoc", 5002),
            row("curl", "out", "/nix/store/dhdysbgmgqp936mvkf5f9s8fh2mk68k5-curl-8.18.0", 5003),
            row("hello", "out", "/nix/store/10s5j3mfdg22k1597x580qrhprnzcjwb-hello-2.12.2", 5),
        ]
    );
}

#[test]
fn store_path_entry_and_options_systems() {
    // rw-store-path-headplane (manifest version 1), aarch64-linux: the store-path entry
    // first, as written, then catalog packages; the legacy counter runs across packages.
    assert_eq!(
        selected("rw-store-path-headplane", System::Aarch64Linux),
        vec![
            row("headplane", "out", "/nix/store/15ng86jmka6lff9615dyww141jj06wn9-headplane-0.6.1", 5),
            row("bash", "man", "/nix/store/1ma79ibx4dn0hdbflsxyxccrxzjqqwr3-bash-interactive-5.3p9-man", 5),
            row("bash", "out", "/nix/store/62p6g8nz491c6z224wc6ci1m699y2jhn-bash-interactive-5.3p9", 5),
            row("bash", "debug", "/nix/store/j1i5n2snbiim8s63x9d41yiqv1anmsvi-bash-interactive-5.3p9-debug", 5000),
            row("bash", "dev", "/nix/store/n2i7ipwdbxiypxfballikvp8gx4jkivz-bash-interactive-5.3p9-dev", 5001),
            row("bash", "doc", "/nix/store/3a9xbr58hfgbj42rmsd9x2fwnir2aasy-bash-interactive-5.3p9-doc", 5002),
            row("bash", "info", "/nix/store/h87j74dh8b6lrj11720bda5qq1zfzac0-bash-interactive-5.3p9-info", 5003),
            row("coreutils", "out", "/nix/store/5pwllqskykz2by85b87kp1a8af587vcn-coreutils-9.9", 5),
            row("coreutils", "debug", "/nix/store/q3bqmaf9gi315ghy600wsyamzmnahkhk-coreutils-9.9-debug", 5004),
            row("coreutils", "info", "/nix/store/fxvw68h1qhpydph2l8j9p4hhs48va1fc-coreutils-9.9-info", 5005),
            row("kubectl", "man", "/nix/store/b9av4ayjma48ch5wy7k85grkiigls84a-kubectl-1.35.0-man", 5),
            row("kubectl", "out", "/nix/store/h2wbgv9grql0bhrpqdab77mw1pd1zr7x-kubectl-1.35.0", 5),
            row("kubectl", "convert", "/nix/store/lbrbsz8zmyzkabn3rr5nxwn4ji0q5wl9-kubectl-1.35.0-convert", 5006),
        ]
    );
    // options.systems = [aarch64-linux, aarch64-darwin]: an x86_64 node is refused.
    let err = lock("rw-store-path-headplane").select(System::X86_64Linux).unwrap_err();
    assert_eq!(
        err,
        SelectError::SystemNotSupported {
            system: "x86_64-linux".into(),
            supported: vec!["aarch64-linux".into(), "aarch64-darwin".into()],
        }
    );
    assert_eq!(
        err.to_string(),
        "This environment is not yet compatible with your system (x86_64-linux).\nSupported systems: aarch64-linux, aarch64-darwin"
    );
}

#[test]
fn flake_entries() {
    assert_eq!(
        selected("flake-hello", System::X86_64Linux),
        vec![row("hello", "out", "/nix/store/i3zw7h6pg3n9r5i63iyqxrapa70i4v5w-hello-2.12.2", 5)]
    );
    // Flake entry in a legacy manifest: `outputs-to-install` (kebab-case) = [man, out].
    assert_eq!(
        selected("flake-bash", System::X86_64Linux),
        vec![
            row("bash", "man", "/nix/store/v26p9gyxsic1d2428hq39b9kqy206r05-bash-interactive-5.3p3-man", 5),
            row("bash", "out", "/nix/store/hkbylipx1iiawqdcjv858p501wv81bpm-bash-interactive-5.3p3", 5),
            row("bash", "debug", "/nix/store/d836xvvrawwc0dmdrfas6v25ibqmn5cb-bash-interactive-5.3p3-debug", 5000),
            row("bash", "dev", "/nix/store/9xglrdgxlfd1rgy4ldij7lxcgbjz17fx-bash-interactive-5.3p3-dev", 5001),
            row("bash", "doc", "/nix/store/66b5nfg85cc55jvppncp5pa1941sxs8h-bash-interactive-5.3p3-doc", 5002),
            row("bash", "info", "/nix/store/s35gwfmpi4g4x3x5wciw3g21mmy946am-bash-interactive-5.3p3-info", 5003),
        ]
    );
}

#[test]
fn schema_version_outputs_all_list_and_default() {
    // outputs = "all": every output at the package priority, in lock order.
    assert_eq!(
        selected("bash", System::X86_64Linux),
        vec![
            row("bash", "debug", "/nix/store/9h8wh9g1vi7ig80jlydcksjwpfh06wwi-bash-5.3p15-debug", 5),
            row("bash", "dev", "/nix/store/4mnc4z1pdfzrzvamggl4kf900jm7fkvj-bash-5.3p15-dev", 5),
            row("bash", "doc", "/nix/store/6b87ciq3mrxdlrg3m6da214gyhcnwn7c-bash-5.3p15-doc", 5),
            row("bash", "info", "/nix/store/z5xmwcw6pdddwl08gvg8094wdlg6b9j3-bash-5.3p15-info", 5),
            row("bash", "man", "/nix/store/msbgaqym67yk4xy09f1kfmzdn3w79lh5-bash-5.3p15-man", 5),
            row("bash", "out", "/nix/store/7ik8057hajl6vq9j40h3jracxjn0bb5x-bash-5.3p15", 5),
        ]
    );
    // outputs = ["out"] (schema 1.10.0).
    assert_eq!(
        selected("bash-outputs-out", System::Aarch64Linux),
        vec![row("bash", "out", "/nix/store/rzpv2vlq1zmhjqjinjgff1v83nw0b3hz-bash-5.3p15", 5)]
    );
    // No descriptor outputs: outputs_to_install.
    assert_eq!(
        selected("hello-empty-sections", System::X86_64Linux),
        vec![row("hello", "out", "/nix/store/nm7p8wxflggcwxfzayhysq4z6a1wg373-hello-2.12.3", 5)]
    );
}

#[test]
fn multi_system_lock_with_per_package_systems() {
    assert_eq!(
        selected("go-gcc-per-package-systems", System::X86_64Linux),
        vec![
            row("gcc", "info", "/nix/store/pcar1vqvmn2y42lplzca392yx605kk31-gcc-wrapper-15.2.0-info", 5),
            row("gcc", "man", "/nix/store/dxqah042znlglapf07vha4qannacibf2-gcc-wrapper-15.2.0-man", 5),
            row("gcc", "out", "/nix/store/xcnqqnhw9hb4j5rjgds2yjryi8qki5f3-gcc-wrapper-15.2.0", 5),
            row("go", "out", "/nix/store/gb0njhqswlc5n127ikgyikvq39r40l6f-go-1.26.4", 5),
        ]
    );
    assert_eq!(
        selected("go-gcc-per-package-systems", System::Aarch64Darwin),
        vec![
            row("clang", "out", "/nix/store/qndx79izh6lanm535xj9pbayy6j8fz5n-clang-wrapper-21.1.8", 5),
            row("go", "out", "/nix/store/kyai650rrywrzflnwda9mbk2c2j9w68r-go-1.26.4", 5),
        ]
    );
}

#[test]
fn implicit_systems_refuse_a_system_the_lock_was_not_resolved_for() {
    // `bash` has no options.systems and was locked for three systems, not x86_64-darwin.
    let lockfile = lock("bash");
    assert_eq!(
        lockfile.implicit_locked_systems().unwrap().into_iter().collect::<Vec<_>>(),
        ["aarch64-darwin", "aarch64-linux", "x86_64-linux"]
    );
    let err = lockfile.select(System::X86_64Darwin).unwrap_err();
    assert!(err.to_string().starts_with(
        "This environment is not locked for your system (x86_64-darwin).\nLocked systems: aarch64-darwin, aarch64-linux, x86_64-linux\n"
    ));
}

#[test]
fn priorities_decide_conflicts() {
    // vim (priority 1) beats vim-full (default 5) for the files both provide.
    assert_eq!(
        selected("vim-conflict-resolved-priority", System::X86_64Linux),
        vec![
            row("vim", "out", "/nix/store/kcfbjmxdngamgxgj88q0g7wimbix9ah8-vim-9.2.0782", 1),
            row("vim", "xxd", "/nix/store/abw07pwjbi2ixl0gg4h535qwh0dkmkfz-vim-9.2.0782-xxd", 1),
            row("vim-full", "out", "/nix/store/6ns5jj6z41zf7mlp698mnlwmipkqk9bn-vim-full-9.2.0782", 5),
            row("vim-full", "xxd", "/nix/store/0svym616kxcddgaw8ns2n1mwaklpy7zm-vim-full-9.2.0782-xxd", 5),
        ]
    );
    let unresolved = selected("vim-conflict", System::X86_64Linux);
    assert!(unresolved.iter().all(|(_, _, _, priority)| *priority == 5));
    // krb5-prereqs: cctools has priority 6 on darwin.
    let darwin = selected("krb5-prereqs-priority", System::Aarch64Darwin);
    assert!(darwin.iter().any(|(id, _, _, p)| id == "cctools" && *p == 6));
    assert!(darwin.iter().filter(|(id, ..)| id != "cctools").all(|(.., p)| *p == 5));
}

#[test]
fn vars_order_hooks_and_profiles_from_fixtures() {
    assert_eq!(
        lock("buildenv-vars-order").vars_in_order().unwrap(),
        vec![("omega".to_string(), "base".to_string()), ("alpha".to_string(), "${omega}-x".to_string())]
    );
    assert_eq!(
        lock("buildenv-vars-cycle").vars_in_order().unwrap_err().to_string(),
        "Found a reference cycle in the '[vars]' section: bar → foo → bar.\nRemove one of these references so the variables no longer form a loop."
    );
    let heredocs = lock("heredocs-hook-profile");
    assert_eq!(heredocs.hook_on_activate().unwrap(), "cat << EOF\nrunning on-activate\nEOF\n");
    let profile = heredocs.profile();
    assert_eq!(profile.common.as_deref(), Some("cat << EOF\nrunning profile-common\nEOF\n"));
    assert_eq!(profile.fish, None);
    let kitchen = lock("kitchen-sink-vars-hooks");
    assert_eq!(
        kitchen.hook_on_activate().unwrap(),
        "echo \"running on-activate\"\necho \"VARS_SECTION_VAR: $VARS_SECTION_VAR\"\nexport HOOK_SECTION_VAR=\"hook_section_var\"\n"
    );
    assert_eq!(
        kitchen.profile().fish.as_deref(),
        Some("alias profile_alias=\"echo fish\"\nset -gx PROFILE_SECTION_VAR profile-fish\n")
    );
    // null sections count as absent.
    let nulls = lock("buildenv-null-fields");
    assert_eq!(nulls.hook_on_activate(), None);
    assert_eq!(nulls.profile(), Default::default());
    assert!(nulls.vars_in_order().unwrap().is_empty());
    assert!(nulls.cuda_detection());
    assert_eq!(nulls.activate_mode(), None);
}

#[test]
fn legacy_floxmeta_metadata_is_refused_like_flox() {
    // Pre-1.0 floxmeta metadata (logMessage/path, no description) matches neither layout.
    for name in ["legacy-v0-floxmeta-metadata-x86_64-linux.json", "legacy-v0-floxmeta-metadata-aarch64-darwin.json"] {
        let bytes = std::fs::read(fixtures().join("floxmeta-examples").join(name)).unwrap();
        let err = GenerationsMetadata::parse(&bytes).unwrap_err();
        assert!(matches!(err, GenerationsError::InvalidSchema { version: 1, .. }), "{name}: {err}");
        let message = err.to_string();
        assert!(
            message.starts_with("Environment metadata of version '1' could not be parsed into its expected schema: ")
                && message.contains("description"),
            "{message}"
        );
    }
}

#[test]
fn generations_v2_sample_from_the_reference() {
    // Reference §2.6, verbatim.
    let sample = r#"{"version": 2, "total_generations": 2, "history": [
  {"kind": "import", "author": "alice", "hostname": "build-01", "command": ["flox", "push"],
   "timestamp": 1750000000, "current_generation": "1"},
  {"kind": "install", "targets": ["ripgrep"], "author": "alice", "hostname": "build-01",
   "command": ["flox", "install", "ripgrep"], "timestamp": 1750000600,
   "current_generation": "2", "previous_generation": "1"},
  {"kind": "switch_generation", "author": "bob", "hostname": "ops-02",
   "command": ["flox", "generations", "rollback"], "timestamp": 1750003600,
   "current_generation": "1", "previous_generation": "2"}]}"#;
    let metadata = GenerationsMetadata::parse(sample.as_bytes()).unwrap();
    assert_eq!(metadata.live(), Some(1));
    assert_eq!(metadata.generations(), vec![1, 2]);
    assert_eq!(metadata.resolve(None, "alice/tools").unwrap(), 1);
    assert_eq!(
        metadata.resolve(Some(3), "alice/tools").unwrap_err().to_string(),
        "generation 3 of alice/tools does not exist; available: 1, 2 (live: 1)"
    );
}
