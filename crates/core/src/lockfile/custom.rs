//! Packages from an organization's own catalog (`flox publish`): in the manifest their
//! `pkg-path` carries the catalog as a prefix (`myorg/myapp`), and their lock entry carries
//! the outputs but no cache URL. At activation their store paths are located by asking the
//! catalog service (see [`crate::catalog`]); base-catalog packages never are.
use super::model::{DescriptorSource, LockedPackage, Lockfile};
use crate::store_path::StorePath;
use crate::system::System;

/// A custom-catalog package of one system and its output paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomPackage {
    pub install_id: String,
    /// `catalog/name`, as the manifest writes it.
    pub pkg_path: String,
    /// Every output's store path (all of them: the catalog is asked for the package).
    pub store_paths: Vec<StorePath>,
}

impl CustomPackage {
    /// The catalog part of the pkg-path (`myorg` of `myorg/myapp`).
    pub fn catalog(&self) -> &str {
        self.pkg_path.split_once('/').map_or("", |(c, _)| c)
    }
}

/// Whether a manifest `pkg-path` names a package of a custom catalog (`catalog/name`), as the
/// Flox CLI decides it.
pub fn is_custom_pkg_path(pkg_path: &str) -> bool {
    pkg_path.split_once('/').is_some_and(|(c, n)| !c.is_empty() && !n.is_empty())
}

impl Lockfile {
    /// The custom-catalog packages locked for `system`, in lockfile order.
    pub fn custom_packages(&self, system: System) -> Vec<CustomPackage> {
        let mut out = Vec::new();
        for package in self.packages.iter().filter(|p| p.system() == system.as_str()) {
            let LockedPackage::Catalog(pkg) = package else { continue };
            let pkg_path = match self.manifest.install.get(&pkg.install_id).map(|d| &d.source) {
                Some(DescriptorSource::Catalog { pkg_path }) => pkg_path.clone(),
                _ => pkg.attr_path.clone(),
            };
            if !is_custom_pkg_path(&pkg_path) {
                continue;
            }
            let store_paths = pkg.outputs.iter().filter_map(|(_, p)| StorePath::parse(p).ok()).collect();
            out.push(CustomPackage { install_id: pkg.install_id.clone(), pkg_path, store_paths });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_pkg_paths() {
        assert!(is_custom_pkg_path("acme/hello-private"));
        assert!(!is_custom_pkg_path("hello"));
        assert!(!is_custom_pkg_path("python3Packages.requests"));
        assert!(!is_custom_pkg_path("/nix/store/x"));
        assert!(!is_custom_pkg_path("acme/"));
    }
}
