//! Output selection: which store paths to link for one system and at which priority, as
//! Flox's pre-build checks and buildenv (`builder.pl`, `packagesToPkgs`) decide it.
use std::collections::BTreeSet;

use super::{
    DescriptorOutputs, DescriptorSource, LockedPackage, Lockfile, ManifestVersion, SelectError, STORE_PATH_OUTPUT,
};
use crate::store_path::StorePath;
use crate::system::System;

/// The outputs to link for one system, in lockfile order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub outputs: Vec<SelectedOutput>,
}

/// One store path to link into the environment, with its conflict priority (lower wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedOutput {
    pub install_id: String,
    /// Output name (`out`, `bin`, `man`…; [`STORE_PATH_OUTPUT`] for store-path entries).
    pub output: String,
    pub store_path: StorePath,
    pub priority: u64,
}

impl Selection {
    /// The distinct store paths, in first-seen order (what must be realised).
    pub fn store_paths(&self) -> Vec<&StorePath> {
        let mut seen = BTreeSet::new();
        self.outputs.iter().map(|o| &o.store_path).filter(|p| seen.insert(p.as_str())).collect()
    }
}

impl Lockfile {
    /// The store paths to link for `system` and their priorities (reference §3.6/§3.7).
    pub fn select(&self, system: System) -> Result<Selection, SelectError> {
        let system_name = system.as_str();
        if let Some(supported) = &self.manifest.options.systems {
            if !supported.iter().any(|s| s == system_name) {
                return Err(SelectError::SystemNotSupported {
                    system: system_name.to_string(),
                    supported: supported.clone(),
                });
            }
        }
        if let Some(locked) = self.implicit_locked_systems() {
            if !locked.contains(system_name) {
                return Err(SelectError::NotLockedForSystem {
                    system: system_name.to_string(),
                    locked: locked.into_iter().collect(),
                });
            }
        }

        let mut selected = Vec::new();
        // builder.pl ranks the not-to-install outputs of legacy manifests with one counter
        // shared by the whole environment, so that they never collide with each other.
        let mut other_output_counter: u64 = 0;
        for package in self.packages.iter().filter(|p| p.system() == system_name) {
            let install_id = package.install_id();
            let mut push = |output: &str, path: &str, priority: u64| -> Result<(), SelectError> {
                let store_path = StorePath::parse(path).map_err(|source| SelectError::InvalidStorePath {
                    install_id: install_id.to_string(),
                    output: output.to_string(),
                    source,
                })?;
                selected.push(SelectedOutput {
                    install_id: install_id.to_string(),
                    output: output.to_string(),
                    store_path,
                    priority,
                });
                Ok(())
            };

            // Store paths are linked as they are, even without an [install] entry (as buildenv does).
            if let LockedPackage::StorePath(p) = package {
                push(STORE_PATH_OUTPUT, &p.store_path, p.priority)?;
                continue;
            }
            let descriptor = self
                .manifest
                .install
                .get(install_id)
                .ok_or_else(|| SelectError::MissingInstallId(install_id.to_string()))?;
            let (outputs, outputs_to_install, attr_path) = match package {
                LockedPackage::Catalog(p) => (&p.outputs, &p.outputs_to_install, p.attr_path.as_str()),
                LockedPackage::Flake(p) => (&p.outputs, &p.outputs_to_install, p.locked_flake_attr_path.as_str()),
                LockedPackage::StorePath(_) => unreachable!("handled above"),
            };
            let priority = package.priority();
            let path_of = |name: &str| outputs.iter().find(|(n, _)| n == name).map(|(_, p)| p.as_str());

            match &self.manifest.version {
                ManifestVersion::V1 => {
                    // All outputs but `stubs` (CUDA build-time stubs break things at run time);
                    // the package's default outputs at its priority, the others behind every
                    // real package at 1000 × priority + counter.
                    let wanted =
                        |name: &str| outputs_to_install.as_ref().is_some_and(|list| list.iter().any(|o| o == name));
                    let usable = || outputs.iter().filter(|(name, _)| name != "stubs");
                    for (name, path) in usable().filter(|(name, _)| wanted(name)) {
                        push(name, path, priority)?;
                    }
                    for (name, path) in usable().filter(|(name, _)| !wanted(name)) {
                        let ranked =
                            priority.checked_mul(1000).and_then(|p| p.checked_add(other_output_counter)).ok_or_else(
                                || SelectError::PriorityOverflow { install_id: install_id.to_string(), priority },
                            )?;
                        other_output_counter += 1;
                        push(name, path, ranked)?;
                    }
                }
                ManifestVersion::Schema(_) => {
                    let names: Vec<&str> = match &descriptor.outputs {
                        Some(DescriptorOutputs::All) => outputs.iter().map(|(n, _)| n.as_str()).collect(),
                        Some(DescriptorOutputs::List(list)) => list.iter().map(String::as_str).collect(),
                        // No descriptor `outputs` and no `outputs_to_install` links nothing,
                        // as builder.pl does (reference §3.7, ambiguous case).
                        None => outputs_to_install.iter().flatten().map(String::as_str).collect(),
                    };
                    let mut linked = BTreeSet::new();
                    for name in names {
                        let path = path_of(name).ok_or_else(|| SelectError::NoSuchOutput {
                            attr_path: attr_path.to_string(),
                            output: name.to_string(),
                        })?;
                        // Duplicates in outputs_to_install are a known catalog bug; link once.
                        if linked.insert(name) {
                            push(name, path, priority)?;
                        }
                    }
                }
            }
        }
        Ok(Selection { outputs: selected })
    }

    /// Every store path locked for `system`: all outputs of each entry of that system, not
    /// only the ones [`Lockfile::select`] links, and without select's system checks. This is
    /// what a binary cache must hold for the lock (the hub copies it when publishing); an
    /// empty set when nothing is locked for `system`.
    pub fn locked_store_paths(&self, system: System) -> Result<BTreeSet<StorePath>, SelectError> {
        let mut paths = BTreeSet::new();
        for package in self.packages.iter().filter(|p| p.system() == system.as_str()) {
            for (output, path) in package.outputs() {
                let store_path = StorePath::parse(path).map_err(|source| SelectError::InvalidStorePath {
                    install_id: package.install_id().to_string(),
                    output: output.to_string(),
                    source,
                })?;
                paths.insert(store_path);
            }
        }
        Ok(paths)
    }

    /// Systems implied by the lock when `options.systems` is unset: those of the entries of
    /// catalog packages without per-package `systems`. `None` when there is no such signal.
    pub fn implicit_locked_systems(&self) -> Option<BTreeSet<String>> {
        if self.manifest.options.systems.is_some() {
            return None;
        }
        let unconstrained: BTreeSet<&str> = self
            .manifest
            .install
            .iter()
            .filter(|(_, d)| matches!(d.source, DescriptorSource::Catalog { .. }) && d.systems.is_none())
            .map(|(id, _)| id.as_str())
            .collect();
        let systems: BTreeSet<String> = self
            .packages
            .iter()
            .filter(|p| unconstrained.contains(p.install_id()))
            .map(|p| p.system().to_string())
            .collect();
        (!systems.is_empty()).then_some(systems)
    }
}
