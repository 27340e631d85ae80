//! Node I/O along the data path: resolve (hub → commit → lock), fetch (the closure into the
//! node's own store, no Nix), render, view, gc, and the node cache that drives them, plus the per-container
//! state the runc wrapper keeps. The decisions live in `imageless-core`; this crate does the
//! fetching, the linking and the bookkeeping on disk.
pub mod cache;
pub mod catalog_access;
pub mod cli;
pub mod config;
pub mod containers;
pub mod deferred_store;
pub mod early_view;
pub mod fetch;
pub mod gc;
pub mod pod_file;
pub mod pressure;
pub mod pull_progress;
pub mod pull_record;
pub mod registration;
pub mod render;
pub mod resolve;
pub mod sbom;
pub mod secret_volume;
pub mod store_read;
pub mod view;
