//! Turning a version's `containerd config default` into a private test config: own root,
//! state and sockets, the local pause image, the machine's limits (no CAP_SYS_RESOURCE, no
//! AppArmor), and the `flox` runtime added the way `imageless install` adds it.
use std::path::Path;

use anyhow::{bail, Context};
use imageless_containerd_config::edit::{add_flox_runtime, FloxRuntime};
use toml_edit::{DocumentMut, Item, Table};

use crate::{parse_doc, str_value, ContainerdVersion, FloxBinaries, PAUSE_IMAGE};

/// Edits `default_text` (that version's `containerd config default`) for a daemon living in `base`.
pub fn private_config(
    default_text: &str,
    version: ContainerdVersion,
    base: &Path,
    flox: Option<&FloxBinaries>,
) -> anyhow::Result<String> {
    let mut doc = parse_doc(default_text)?;
    let p = |sub: &str| base.join(sub).to_string_lossy().into_owned();
    doc["root"] = str_value(&p("root"));
    doc["state"] = str_value(&p("state"));
    set_path(&mut doc, &["grpc"], "address", &p("containerd.sock"))?;
    set_path(&mut doc, &["ttrpc"], "address", &p("containerd-ttrpc.sock"))?;
    // Shared default paths another daemon on the machine may use.
    set_path(&mut doc, &["plugins", "io.containerd.internal.v1.opt"], "path", &p("opt"))?;
    if let Some(nri) = table_at(&mut doc, &["plugins", "io.containerd.nri.v1.nri"]) {
        nri["disable"] = Item::Value(true.into());
        nri["socket_path"] = str_value(&p("nri.sock"));
    }

    let runtime_plugin: &[&str] = match version.config_version() {
        3 => &["plugins", "io.containerd.cri.v1.runtime"],
        _ => &["plugins", "io.containerd.grpc.v1.cri"],
    };
    let cri = table_at(&mut doc, runtime_plugin)
        .with_context(|| format!("config default of {version} has no [{}]", runtime_plugin.join(".")))?;
    // The pod sandbox asks for oom_score_adj -998, which needs CAP_SYS_RESOURCE.
    cri["restrict_oom_score_adj"] = Item::Value(true.into());
    if cri.contains_key("disable_apparmor") {
        cri["disable_apparmor"] = Item::Value(true.into());
    }
    match version.config_version() {
        3 => set_path(&mut doc, &["plugins", "io.containerd.cri.v1.images", "pinned_images"], "sandbox", PAUSE_IMAGE)?,
        _ => set_path(&mut doc, &["plugins", "io.containerd.grpc.v1.cri"], "sandbox_image", PAUSE_IMAGE)?,
    }
    let text = doc.to_string();
    match flox {
        None => Ok(text),
        Some(f) => Ok(add_flox_runtime(
            &text,
            &FloxRuntime { runc_wrapper: f.runc_wrapper.clone(), shim_launcher: f.shim_launcher.clone() },
        )?),
    }
}

/// Points the CRI image service at `hosts_dir` (containerd's `config_path`, the way containerd
/// configures registries since 1.5) and writes `hosts_dir/<addr>/hosts.toml` for each plain-HTTP
/// registry in `registries` (`host:port`): a pull of `<addr>/name:tag` then goes to
/// `http://<addr>` with no TLS, as a node's config would say for an in-cluster registry.
/// Returns the edited config text; nothing else of it changes.
pub fn plain_http_registry_hosts(
    config_text: &str,
    version: ContainerdVersion,
    hosts_dir: &Path,
    registries: &[&str],
) -> anyhow::Result<String> {
    let mut doc = parse_doc(config_text)?;
    let registry: &[&str] = match version.config_version() {
        3 => &["plugins", "io.containerd.cri.v1.images", "registry"],
        _ => &["plugins", "io.containerd.grpc.v1.cri", "registry"],
    };
    set_path(&mut doc, registry, "config_path", &hosts_dir.to_string_lossy())?;
    std::fs::create_dir_all(hosts_dir).with_context(|| format!("creating {}", hosts_dir.display()))?;
    for addr in registries {
        write_plain_http_host(hosts_dir, addr)?;
    }
    Ok(doc.to_string())
}

/// Writes `hosts_dir/<addr>/hosts.toml` for a plain-HTTP registry at `addr`. containerd reads
/// the hosts directory at every pull, so a registry started after the daemon can be added.
pub fn write_plain_http_host(hosts_dir: &Path, addr: &str) -> anyhow::Result<()> {
    let dir = hosts_dir.join(addr);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text =
        format!("server = \"http://{addr}\"\n\n[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
    std::fs::write(dir.join("hosts.toml"), text).with_context(|| format!("writing {}", dir.display()))
}

/// A [`crate::ConfigHook`] that applies [`plain_http_registry_hosts`] to a daemon's config,
/// the hosts directory in the daemon's own dir (`<dir>/certs.d`).
pub fn registry_hook(version: ContainerdVersion, registries: Vec<String>) -> crate::ConfigHook {
    crate::ConfigHook(std::sync::Arc::new(move |config: &Path, dir: &Path| {
        let text = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
        let addrs: Vec<&str> = registries.iter().map(String::as_str).collect();
        let text = plain_http_registry_hosts(&text, version, &dir.join("certs.d"), &addrs)?;
        std::fs::write(config, text).with_context(|| format!("writing {}", config.display()))?;
        Ok(())
    }))
}

fn table_at<'a>(doc: &'a mut DocumentMut, path: &[&str]) -> Option<&'a mut Table> {
    let mut t = doc.as_table_mut();
    for key in path {
        t = t.get_mut(key)?.as_table_mut()?;
    }
    Some(t)
}

/// Sets `key` in the table at `path`, creating missing tables.
fn set_path(doc: &mut DocumentMut, path: &[&str], key: &str, value: &str) -> anyhow::Result<()> {
    let mut t = doc.as_table_mut();
    for k in path {
        if !t.contains_key(k) {
            let mut new = Table::new();
            new.set_implicit(true);
            t.insert(k, Item::Table(new));
        }
        t = match t.get_mut(k).and_then(Item::as_table_mut) {
            Some(t) => t,
            None => bail!("containerd config: `{}` is not a table", path.join(".")),
        };
    }
    t[key] = str_value(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(v: ContainerdVersion) -> String {
        let p = format!(
            "{}/../../../shared/fixtures/containerd-configs/containerd-{}-default.toml",
            env!("CARGO_MANIFEST_DIR"),
            v.as_str()
        );
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn v2_config_is_private_and_has_flox() {
        let text = private_config(
            &fixture(ContainerdVersion::V1_6),
            ContainerdVersion::V1_6,
            Path::new("/t"),
            Some(&FloxBinaries::default()),
        )
        .unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(doc["root"].as_str(), Some("/t/root"));
        assert_eq!(doc["grpc"]["address"].as_str(), Some("/t/containerd.sock"));
        let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["sandbox_image"].as_str(), Some(PAUSE_IMAGE));
        assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(true));
        assert_eq!(cri["disable_apparmor"].as_bool(), Some(true));
        let flox = &cri["containerd"]["runtimes"]["flox"];
        assert!(flox["options"]["BinaryName"].as_str().unwrap().ends_with("target/debug/flox-runc"));
        assert!(cri["containerd"]["runtimes"]["runc"].is_table());
    }

    #[test]
    fn registry_hosts_set_config_path_and_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        for v in [ContainerdVersion::V1_7, ContainerdVersion::V2_1] {
            let base = private_config(&fixture(v), v, Path::new("/t"), None).unwrap();
            let text = plain_http_registry_hosts(&base, v, dir.path(), &["127.0.0.1:5000"]).unwrap();
            let doc: toml::Table = toml::from_str(&text).unwrap();
            let reg = match v.config_version() {
                3 => &doc["plugins"]["io.containerd.cri.v1.images"]["registry"],
                _ => &doc["plugins"]["io.containerd.grpc.v1.cri"]["registry"],
            };
            assert_eq!(reg["config_path"].as_str(), Some(dir.path().to_str().unwrap()));
            // Everything else is as before.
            let without =
                text.replace(&format!("config_path = {:?}", dir.path().to_str().unwrap()), "config_path = \"\"");
            assert_eq!(toml::from_str::<toml::Table>(&without).unwrap(), toml::from_str::<toml::Table>(&base).unwrap());
        }
        let hosts: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.path().join("127.0.0.1:5000/hosts.toml")).unwrap()).unwrap();
        assert_eq!(hosts["server"].as_str(), Some("http://127.0.0.1:5000"));
        assert!(hosts["host"]["http://127.0.0.1:5000"]["capabilities"].as_array().unwrap().len() == 2);
    }

    #[test]
    fn v3_config_uses_the_split_cri_plugins() {
        let text =
            private_config(&fixture(ContainerdVersion::V2_1), ContainerdVersion::V2_1, Path::new("/t"), None).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let rt = &doc["plugins"]["io.containerd.cri.v1.runtime"];
        assert_eq!(rt["restrict_oom_score_adj"].as_bool(), Some(true));
        assert_eq!(
            doc["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
            Some(PAUSE_IMAGE)
        );
        assert_eq!(doc["plugins"]["io.containerd.nri.v1.nri"]["disable"].as_bool(), Some(true));
        assert!(rt["containerd"]["runtimes"].get("flox").is_none());
    }
}
