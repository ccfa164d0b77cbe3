//! File-system helpers: the directory lock, directory fsync, segment preparation.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::format::segment_header;
use super::StoreError;

/// Name of the lock file in a data directory.
pub(super) const LOCK_FILE: &str = "LOCK";
/// Name of the marker a clean close leaves behind.
pub(super) const CLEAN_FILE: &str = "CLEAN";

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.seg"))
}

/// The sequence number in a segment file name, if it is one.
pub(super) fn segment_seq(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub(super) fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

pub(super) fn io_err(op: &'static str, path: &Path, source: io::Error) -> StoreError {
    if is_disk_full(&source) {
        StoreError::DiskFull {
            path: path.to_path_buf(),
        }
    } else {
        StoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// fsyncs a directory, so that creations, renames and unlinks in it are durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("fsync directory", dir, e))
}

/// Takes the exclusive lock on `dir/LOCK` (flock, released when the file closes,
/// including on a crash) and writes our pid into it for the next opener's error message.
pub(super) fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err("open lock file", &path, e))?;
    // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut s = String::new();
            let holder = f
                .read_to_string(&mut s)
                .ok()
                .and_then(|_| s.trim().parse::<u32>().ok());
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        return Err(io_err("lock", &path, e));
    }
    f.set_len(0)
        .and_then(|_| f.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0))
        .and_then(|_| f.flush())
        .map_err(|e| io_err("write lock file", &path, e))?;
    Ok(f)
}

/// Creates segment `seq`: header, then zeros up to `size`, written and fdatasync'd
/// under a temporary name, then renamed into place and the directory synced. Appends
/// into it never change its size, so an `fdatasync` makes them durable, and a full
/// disk shows up here (as [`StoreError::DiskFull`]) rather than in the middle of a write.
pub(super) fn prepare_segment(dir: &Path, seq: u64, size: u64) -> Result<File, StoreError> {
    let path = segment_path(dir, seq);
    let tmp = path.with_extension("seg.tmp");
    let result = (|| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io_err("create segment", &tmp, e))?;
        let zeros = vec![0u8; 1 << 20];
        let mut off = 0u64;
        while off < size {
            let n = (size - off).min(zeros.len() as u64) as usize;
            f.write_all_at(&zeros[..n], off)
                .map_err(|e| io_err("zero-fill segment", &tmp, e))?;
            off += n as u64;
        }
        f.write_all_at(&segment_header(seq), 0)
            .map_err(|e| io_err("write segment header", &tmp, e))?;
        f.sync_data()
            .map_err(|e| io_err("fdatasync segment", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err("rename segment", &path, e))?;
        sync_dir(dir)?;
        Ok(f)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Opens an existing segment for appending.
pub(super) fn open_segment(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_err("open segment", path, e))
}

/// Reads a whole file.
pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut f = File::open(path).map_err(|e| io_err("open segment", path, e))?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)
        .map_err(|e| io_err("read segment", path, e))?;
    Ok(v)
}

/// Creates `path` with `contents`, fsyncs it and its directory.
pub(super) fn write_durably(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StoreError> {
    let path = dir.join(name);
    let mut f = File::create(&path).map_err(|e| io_err("create", &path, e))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err("write", &path, e))?;
    sync_dir(dir)
}
