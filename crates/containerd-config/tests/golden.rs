//! Golden-file tests: every fixture config under tests/data is edited and compared with the
//! checked-in result under tests/golden (`<name>.flox.toml` plus a `<name>.diff` for review).
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p imageless-containerd-config --test golden`.
use std::path::{Path, PathBuf};

use imageless_containerd_config::edit::{self, FloxRuntime};

fn runtime() -> FloxRuntime {
    FloxRuntime {
        runc_wrapper: "/usr/local/bin/flox-runc".into(),
        shim_launcher: "/usr/local/bin/containerd-shim-flox-v2".into(),
    }
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.ends_with(".toml") || name.ends_with(".toml.tmpl")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 29, "fixtures missing from {}", dir.display());
    files
}

fn check_golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(actual, expected, "{} differs (UPDATE_GOLDEN=1 rewrites it)", path.display());
}

#[test]
fn every_fixture_matches_its_golden_file() {
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for input_path in fixtures() {
        let name = input_path.file_name().unwrap().to_str().unwrap().to_owned();
        let input = std::fs::read_to_string(&input_path).unwrap();
        let is_template = name.ends_with(".tmpl");
        let (edited, again, removed) = if is_template {
            let edited = edit::add_flox_runtime_template(&input, &runtime(), &Default::default()).unwrap();
            let again = edit::add_flox_runtime_template(&edited, &runtime(), &Default::default()).unwrap();
            (edited.clone(), again, edit::remove_flox_runtime_template(&edited))
        } else {
            let edited = edit::add_flox_runtime(&input, &runtime()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let again = edit::add_flox_runtime(&edited, &runtime()).unwrap();
            (edited.clone(), again, edit::remove_flox_runtime(&edited).unwrap())
        };
        assert_ne!(edited, input, "{name}: nothing was added");
        assert_eq!(again, edited, "{name}: second run changed the file");
        assert_eq!(removed, input, "{name}: remove did not give back the original bytes");
        // Every line of the original survives, in order (nothing dropped or reordered).
        let mut edited_lines = edited.lines();
        for line in input.lines() {
            assert!(edited_lines.any(|l| l == line), "{name}: line {line:?} lost or moved");
        }
        if !is_template {
            let parsed: toml::Table =
                toml::from_str(&edited).unwrap_or_else(|e| panic!("{name}: edited config does not parse: {e}"));
            drop(parsed);
            let facts = edit::inspect(&edited).unwrap();
            let flox = facts.flox.unwrap_or_else(|| panic!("{name}: no flox runtime"));
            assert_eq!(flox.binary_name.as_deref(), Some("/usr/local/bin/flox-runc"), "{name}");
            assert_eq!(flox.runtime_path.as_deref(), Some("/usr/local/bin/containerd-shim-flox-v2"));
            assert_eq!(flox.pod_annotations, ["flox.dev/*"], "{name}");
            assert_eq!(flox.container_annotations, ["flox.dev/*"], "{name}");
        } else {
            assert!(edited.contains("BinaryName = \"/usr/local/bin/flox-runc\""), "{name}");
        }
        let stem = name.trim_end_matches(".tmpl").trim_end_matches(".toml");
        let ext = if is_template { "toml.tmpl" } else { "toml" };
        check_golden(&golden_dir.join(format!("{stem}.flox.{ext}")), &edited);
        let diff = similar::TextDiff::from_lines(&input, &edited)
            .unified_diff()
            .header(&name, &format!("{stem}.flox.{ext}"))
            .to_string();
        check_golden(&golden_dir.join(format!("{stem}.diff")), &diff);
    }
}

/// The v3 default of containerd 2.1.9 keeps its single-quote style and gets a sandboxer.
#[test]
fn v3_default_gets_sandboxer_and_literal_strings() {
    let input =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/containerd-2.1.9-default.toml"))
            .unwrap();
    let edited = edit::add_flox_runtime(&input, &runtime()).unwrap();
    assert!(edited.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.flox]"));
    assert!(edited.contains("          sandboxer = 'podsandbox'\n"), "{edited}");
    assert!(edited.contains("            BinaryName = '/usr/local/bin/flox-runc'\n"), "{edited}");
    assert!(edited.contains("            SystemdCgroup = false\n"), "{edited}");
}
