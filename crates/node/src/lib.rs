//! Node I/O: hub client, fetching closures into the node's own store (no Nix), rendering,
//! views, gc and the node cache, plus the per-container
//! state the runc wrapper keeps. The decisions live in `imageless-core`; this crate does the
//! fetching, the linking and the bookkeeping on disk.
pub mod cache;
pub mod cli;
pub mod config;
pub mod containers;
pub mod fetch;
pub mod gc;
pub mod hub;
pub mod pod_file;
pub mod pull_progress;
pub mod registration;
pub mod render;
pub mod secret_volume;
pub mod store_read;
pub mod view;
