//! Step timings of one wrapper call, for finding where a create spends its time: logged at
//! debug level under the target `flox_runc::timing` (e.g. `IMAGELESS_LOG=flox_runc::timing=debug`),
//! one line per call, as `step=µs` pairs. Costs two clock reads per step when disabled.
use std::fmt::Write;
use std::time::Instant;

pub struct Steps {
    last: Instant,
    done: Vec<(&'static str, u128)>,
}

impl Steps {
    pub fn start() -> Steps {
        Steps { last: Instant::now(), done: Vec::new() }
    }

    /// Ends step `name` (it began at the previous mark).
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, now.duration_since(self.last).as_micros()));
        self.last = now;
    }

    /// Logs the steps of call `what` on container `id`.
    pub fn log(&self, what: &str, id: &str) {
        if tracing::enabled!(target: "flox_runc::timing", tracing::Level::DEBUG) {
            let mut text = String::new();
            for (name, us) in &self.done {
                let _ = write!(text, " {name}={us}");
            }
            tracing::debug!(target: "flox_runc::timing", "{what} {id}:{text}");
        }
    }
}
