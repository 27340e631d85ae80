//! SIGTERM/SIGINT → the server's shutdown future, through tokio's signal handling. The
//! handlers are installed before the hub says it is listening, so a signal sent as soon as the
//! `listening on` line appears is never lost.
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Installed handlers for the two termination signals.
pub struct TerminationSignals {
    term: Signal,
    int: Signal,
}

impl TerminationSignals {
    /// Must be called inside a tokio runtime.
    pub fn install() -> std::io::Result<TerminationSignals> {
        Ok(TerminationSignals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Completes at the first SIGTERM or SIGINT, saying which.
    pub async fn received(mut self) {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        tracing::info!("received {name}, shutting down");
    }
}
