//! The disk alarm (RabbitMQ's `disk_free_limit`): publishers are blocked, through
//! the memory alarm's path (the [`super::MemoryMonitor`] alarm, then
//! `connection.blocked`), while the data directory's file system has less free
//! space than the limit or the store could not prepare a segment (disk full); they
//! are unblocked when space returns. Consumers keep reading and acking meanwhile,
//! which frees space.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Core;

/// RabbitMQ's default `disk_free_limit`: 50 MB.
pub const DEFAULT_DISK_FREE_LIMIT: u64 = 50_000_000;

/// How often free space is checked (the store's disk-full state is followed as
/// it changes).
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes available to an unprivileged writer on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path, `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Both are u64 on 64-bit Linux, narrower on some other targets.
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Ok(blocks.saturating_mul(size))
}

/// Follows free space and the store's disk-full and failed states for `core` (a durable core)
/// in the current runtime, until the core is dropped.
pub(crate) fn spawn(core: &Arc<Core>, limit: u64) {
    let (Some(dir), Some(mut full), Some(mut failed)) = (
        core.data_dir().map(Path::to_path_buf),
        core.watch_disk_full(),
        core.watch_store_failed(),
    ) else {
        return;
    };
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<Core> = Arc::downgrade(core);
    handle.spawn(async move {
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = full.changed() => if changed.is_err() { break },
                changed = failed.changed() => if changed.is_err() { break },
            }
            let Some(core) = weak.upgrade() else { break };
            // A failed store takes no more publishes, ever: its publishers
            // are blocked as on a full disk, rather than nacked one by one.
            let store_full = *full.borrow() || *failed.borrow();
            core.memory().set_disk_alarm(store_full || low(&dir, limit));
        }
    });
}

/// Whether `dir` has less than `limit` bytes free (an unreadable figure counts as
/// enough: the store's own disk-full state still guards the writes).
fn low(dir: &Path, limit: u64) -> bool {
    match free_bytes(dir) {
        Ok(free) => free < limit,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read free disk space");
            false
        }
    }
}
