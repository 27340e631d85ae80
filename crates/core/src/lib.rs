//! The pure core of Imageless Kubernetes: parse, decide and edit, with no I/O.
//!
//! Everything here is a value that can be unit-tested without a container, a hub or Nix:
//! pod annotations become [`pod_options::PodOptions`], a FloxHub reference becomes an
//! [`env_ref::EnvRef`], a lockfile becomes the packages to link for one system, and an OCI
//! spec is edited by [`spec_edit`] as JSON so that no field containerd wrote is dropped.
pub mod activation;
pub mod catalog;
pub mod container_paths;
pub mod decide;
pub mod env_ref;
pub mod generations;
pub mod lockfile;
pub mod pod_options;
pub mod runc_args;
pub mod sbom;
pub mod spec_edit;
pub mod store_path;
pub mod system;
pub mod token;
