//! SIGTERM/SIGINT → a stop flag, without async signal handlers: the signals are blocked in
//! every thread and one thread takes them with sigwait(2).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread. Call before spawning any thread (threads
/// inherit the mask); children spawned through std get an empty mask again.
pub fn block_termination_signals() -> std::io::Result<()> {
    let set = termination_set();
    // SAFETY: valid set, null old-set pointer.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// Starts the thread that waits for SIGTERM/SIGINT and sets `stop`.
pub fn spawn_signal_waiter(stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("hub-signals".into())
        .spawn(move || {
            let set = termination_set();
            let mut sig: libc::c_int = 0;
            // SAFETY: valid set and out pointer; the signals are blocked in every thread.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                let name = if sig == libc::SIGTERM { "SIGTERM" } else { "SIGINT" };
                tracing::info!("received {name}, shutting down");
                stop.store(true, Ordering::SeqCst);
            }
        })
        .expect("spawn signal thread");
}
