//! The signals a serving process handles (SIGINT, SIGTERM, SIGHUP, SIGUSR2), held back
//! while a child process starts: a process started by a supervisor or an upgrade
//! begins with them blocked (the mask survives `exec`), so a signal sent before it has
//! installed its handlers waits for them instead of killing it with the default
//! action. The process unblocks them once its handlers are in place.

/// The handled signals as a set.
fn handled() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset only write the set they are given, which is
    // initialised by sigemptyset before any use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR2] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks the handled signals in a child between `fork` and `exec` (async-signal-safe).
pub(crate) fn block_in_child() -> std::io::Result<()> {
    let set = handled();
    // SAFETY: sigprocmask is async-signal-safe and reads a set on this stack.
    match unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Unblocks the handled signals on the calling thread, once their handlers are
/// installed: one that arrived while they were blocked is delivered now.
pub(crate) fn unblock() {
    let set = handled();
    // SAFETY: pthread_sigmask reads a set on this stack; it changes only this
    // thread's mask.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}
