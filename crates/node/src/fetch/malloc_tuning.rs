//! glibc's allocator, tuned for a fetch (process-wide, set once before the fetch's threads
//! exist; a setting given in the environment wins, `MALLOC_*_` or `GLIBC_TUNABLES`).
//!
//! - Two arenas: glibc gives each thread that contends for the heap an arena of its own (up to
//!   8 per core) and keeps their freed memory: a fetch's runtime and unpack threads left a pull
//!   of `flox/large` at 68 MB peak RSS, 48 MB with two arenas (same time).
//! - Large blocks from the heap, not from `mmap`: every NAR gets a zstd decoder whose window is
//!   as large as the NAR (up to 8 MB), and every response a read buffer of a few hundred KB.
//!   Above glibc's mmap threshold each is a fresh mapping, unmapped when freed, so every page
//!   of it faults in again for the next NAR: 184,000 page faults in a cold pull of
//!   `flox/xlarge` (1,045 NARs), 63 % of them zstd writing its window, about a tenth of the
//!   pull's system time. From the heap (and not trimmed back at every free) the next NAR's
//!   window reuses pages already there. The bound on NARs in flight ([`super::WINDOW_BUDGET_KIB`])
//!   still bounds the memory; [`release`] hands the free part back when a fetch ends (the node
//!   agent lives on between pulls).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    /// Blocks up to this size come from the heap (glibc's ceiling for the setting is 32 MB).
    const MMAP_THRESHOLD: libc::c_int = 32 * 1024 * 1024;
    /// Free memory at the top of a heap kept for reuse during a fetch.
    const TRIM_THRESHOLD: libc::c_int = 64 * 1024 * 1024;

    fn given(vars: &[&str]) -> bool {
        vars.iter().any(|v| std::env::var_os(v).is_some())
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| vars.iter().any(|v| t.contains(tunable(v))))
    }

    /// The `glibc.malloc.*` tunable a `MALLOC_*_` variable corresponds to.
    fn tunable(var: &str) -> &'static str {
        match var {
            "MALLOC_ARENA_MAX" => "malloc.arena_max",
            "MALLOC_MMAP_THRESHOLD_" => "malloc.mmap_threshold",
            _ => "malloc.trim_threshold",
        }
    }

    pub fn tune() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes the allocator's tuning; these parameters with
            // positive values within glibc's limits are always accepted.
            unsafe {
                if !given(&["MALLOC_ARENA_MAX"]) {
                    libc::mallopt(libc::M_ARENA_MAX, 2);
                }
                if !given(&["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]) {
                    libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                    libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
                }
            }
        });
    }

    pub fn release() {
        // SAFETY: malloc_trim only returns free memory to the system.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Sets the tuning (once per process).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::tune();
}

/// Returns the free memory the fetch's blocks left in the heaps to the system.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::release();
}
