//! Node I/O: hub client, Nix realization, rendering and the node cache.
pub mod cli;
