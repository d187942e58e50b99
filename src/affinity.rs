//! Pinning a thread to a CPU (the admin and hooks threads; the shards are
//! placed by glommio).

use tracing::warn;

/// Pins the calling thread to `cpu` (checked at start to be one this
/// process may use); a failure is logged and the thread runs unpinned.
/// `what` names the thread in the log.
pub fn pin_current_thread(cpu: usize, what: &str) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0) applies to the calling thread.
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    if !pinned {
        warn!(cpu, "cannot pin the {what} thread: {}; it runs unpinned", std::io::Error::last_os_error());
    }
}
