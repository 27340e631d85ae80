//! Node I/O: resolve (hub → commit → lock), Nix realization, rendering and the node cache, plus the per-container
//! state the runc wrapper keeps. The decisions live in `imageless-core`; this crate does the
//! fetching, the linking and the bookkeeping on disk.
pub mod cache;
pub mod cli;
pub mod config;
pub mod containers;
pub mod fetch;
pub mod pod_file;
pub mod realize;
pub mod render;
pub mod resolve;
pub mod secret_volume;
pub mod view;
