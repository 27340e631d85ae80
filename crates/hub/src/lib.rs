//! A FloxHub-compatible hub for tests, the demo and air-gapped clusters.
pub mod cli;
