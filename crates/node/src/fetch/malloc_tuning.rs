//! glibc's allocator, tuned for a fetch (process-wide, set once before the fetch's threads
//! exist; `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES=glibc.malloc.arena_max=…` in the environment
//! wins).
//!
//! Two arenas: glibc gives each thread that contends for the heap an arena of its own (up to 8
//! per core) and keeps their freed memory: a fetch's runtime and unpack threads left a pull of
//! `flox/large` at 68 MB peak RSS, 48 MB with two arenas (same time).
//!
//! Tried and left: keeping large blocks in the heap (`M_MMAP_THRESHOLD` 32 MB) so that each
//! NAR's zstd window did not fault in afresh; keeping the decoding contexts themselves
//! ([`super::decompress::ZstdContexts`]) removes most of those faults (184,000 → 54,000 in a
//! cold pull of `flox/xlarge`) for 4–5 MB less peak RSS than the threshold did.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    fn given() -> bool {
        std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc.arena_max"))
    }

    pub fn tune() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if !given() {
                // SAFETY: mallopt only changes the allocator's tuning; M_ARENA_MAX with a
                // positive value is always accepted.
                unsafe {
                    libc::mallopt(libc::M_ARENA_MAX, 2);
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

/// Returns the free memory a fetch left in the heaps to the system (the node agent lives on
/// between pulls).
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::release();
}
