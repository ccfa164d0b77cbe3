//! The writer thread: takes everything pending, writes it in slices of at most
//! `max_batch_bytes` (one `pwrite` + one `fdatasync` each), places the records in the
//! index and resolves their [`super::Durable`]s.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::format::{kind, le32, le64, RECORD_HEADER, SEGMENT_HEADER};
use super::{
    DefClass, Lsn, Mark, Pending, Place, SegStats, Shared, State, StoreError, WriteFailure,
};

/// The segment being appended to.
pub(super) struct Head {
    pub seq: u64,
    pub file: File,
    pub offset: u64,
}

pub(super) fn run(shared: Arc<Shared>, mut head: Head) {
    let mut recycled: Vec<u8> = Vec::new();
    loop {
        let batch = {
            let mut st = shared.lock();
            while st.pending.marks.is_empty() && !st.closing && st.failed.is_none() {
                st = shared
                    .writer_wake
                    .wait(st)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if st.pending.marks.is_empty() {
                return;
            }
            let fresh = Pending {
                buf: std::mem::take(&mut recycled),
                marks: Vec::new(),
            };
            std::mem::replace(&mut st.pending, fresh)
        };
        let Pending { mut buf, mut marks } = batch;
        if let Err((done, failure)) = write_batch(&shared, &mut head, &buf, &mut marks) {
            fail(&shared, &mut marks[done..], failure);
        }
        buf.clear();
        recycled = buf;
    }
}

/// Fails `marks` and, for an I/O failure, poisons the store and fails everything pending.
pub(super) fn fail(shared: &Shared, marks: &mut [Mark], failure: WriteFailure) {
    let mut rest = Vec::new();
    {
        let mut st = shared.lock();
        if let WriteFailure::Io(e) = &failure {
            tracing::error!(error = %e, dir = %shared.dir.display(), "store write failed; refusing further writes");
            st.failed = Some(e.clone());
            shared.failed_tx.send_replace(true);
        }
        if st.failed.is_some() || st.closing {
            rest = std::mem::take(&mut st.pending.marks);
            st.pending.buf.clear();
        }
    }
    for m in marks.iter_mut().chain(rest.iter_mut()) {
        if let Some(tx) = m.tx.take() {
            let _ = tx.send(Err(failure.clone()));
        }
    }
    shared.pending_bytes.store(0, Ordering::Relaxed);
    shared.room.notify_waiters();
}

/// Writes a batch. On failure returns how many marks completed and why the rest failed.
fn write_batch(
    shared: &Shared,
    head: &mut Head,
    buf: &[u8],
    marks: &mut [Mark],
) -> Result<(), (usize, WriteFailure)> {
    let seg_size = shared.opts.segment_size;
    let max_batch = shared.opts.max_batch_bytes;
    let mut i = 0;
    while i < marks.len() {
        let slice_start = if i == 0 { 0 } else { marks[i - 1].end };
        let first_len = (marks[i].end - slice_start) as u64;
        if head.offset + first_len > seg_size {
            rotate(shared, head).map_err(|f| (i, f))?;
        }
        let mut j = i + 1;
        while j < marks.len() {
            let len = marks[j].end - slice_start;
            if len > max_batch || head.offset + len as u64 > seg_size {
                break;
            }
            j += 1;
        }
        let bytes = &buf[slice_start..marks[j - 1].end];
        let io = |e: io::Error| (i, WriteFailure::Io(Arc::new(e)));
        if bytes.len() > max_batch {
            // One record bigger than a slice: header first, synced, so that recovery
            // knows its extent if the payload tears.
            head.file
                .write_all_at(&bytes[..RECORD_HEADER], head.offset)
                .map_err(io)?;
            head.file.sync_data().map_err(io)?;
            head.file
                .write_all_at(&bytes[RECORD_HEADER..], head.offset + RECORD_HEADER as u64)
                .map_err(io)?;
            head.file.sync_data().map_err(io)?;
            shared.syncs.fetch_add(2, Ordering::Relaxed);
        } else {
            head.file.write_all_at(bytes, head.offset).map_err(io)?;
            head.file.sync_data().map_err(io)?;
            shared.syncs.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut st = shared.lock();
            let mut rec_start = slice_start;
            for m in &marks[i..j] {
                let place = Place {
                    seq: head.seq,
                    offset: (head.offset + (rec_start - slice_start) as u64) as u32,
                    len: (m.end - rec_start) as u32,
                };
                place_record(&mut st, m.kind, m.lsn, &buf[rec_start..m.end], place);
                rec_start = m.end;
            }
        }
        shared
            .durable_lsn
            .store(marks[j - 1].lsn, Ordering::Release);
        shared
            .records_written
            .fetch_add((j - i) as u64, Ordering::Relaxed);
        shared
            .bytes_written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        shared
            .pending_bytes
            .fetch_sub(bytes.len() as u64, Ordering::Relaxed);
        shared.room.notify_waiters();
        head.offset += bytes.len() as u64;
        for m in &mut marks[i..j] {
            if let Some(tx) = m.tx.take() {
                let _ = tx.send(Ok(()));
            }
        }
        i = j;
    }
    Ok(())
}

/// Records that a written record sits at `place`, and counts it live if it still is.
fn place_record(st: &mut State, kind: u8, lsn: Lsn, rec: &[u8], place: Place) {
    let payload = &rec[RECORD_HEADER..];
    let live = match kind {
        kind::PUBLISH | kind::RELOCATED => {
            let id = if kind == kind::PUBLISH {
                lsn
            } else {
                le64(payload)
            };
            match st.msgs.get_mut(&id) {
                Some(e) if e.rec_lsn == lsn => {
                    e.place = Some(place);
                    true
                }
                _ => false,
            }
        }
        kind::DEF_PUT => {
            let class = DefClass(payload[0]);
            let kl = le32(&payload[1..5]) as usize;
            let key: Box<[u8]> = payload[5..5 + kl].into();
            match st.defs.get_mut(&(class, key)) {
                Some(d) if d.rec_lsn == lsn => {
                    d.place = Some(place);
                    true
                }
                _ => false,
            }
        }
        _ => false,
    };
    let s = st.segs.entry(place.seq).or_default();
    s.records += 1;
    s.written += u64::from(place.len);
    if live {
        s.live_records += 1;
        s.live_bytes += u64::from(place.len);
    }
}

/// Seals the head (every slice in it is already synced) and moves to the next
/// prepared segment, waiting for the maintenance thread to make one if needed.
fn rotate(shared: &Shared, head: &mut Head) -> Result<(), WriteFailure> {
    let mut st = shared.lock();
    if let Some(s) = st.segs.get_mut(&head.seq) {
        s.sealed = true;
    }
    shared.maint_wake.notify_one();
    loop {
        if let Some((seq, file)) = st.spares.pop_front() {
            debug_assert_eq!(seq, head.seq + 1);
            st.segs.insert(seq, SegStats::default());
            *head = Head {
                seq,
                file,
                offset: SEGMENT_HEADER as u64,
            };
            shared.maint_wake.notify_one();
            return Ok(());
        }
        if let Some(e) = &st.failed {
            return Err(WriteFailure::Io(e.clone()));
        }
        if st.maintenance_done {
            // Closing, and the maintenance thread has exited: make the segment here.
            drop(st);
            let seq = head.seq + 1;
            return match super::fsutil::prepare_segment(&shared.dir, seq, shared.opts.segment_size)
            {
                Ok(file) => {
                    let mut st = shared.lock();
                    st.segs.insert(seq, SegStats::default());
                    st.prepared_upto = st.prepared_upto.max(seq);
                    *head = Head {
                        seq,
                        file,
                        offset: SEGMENT_HEADER as u64,
                    };
                    Ok(())
                }
                Err(StoreError::DiskFull { path }) => Err(WriteFailure::DiskFull(path)),
                Err(e) => Err(WriteFailure::Io(Arc::new(io::Error::other(e.to_string())))),
            };
        }
        shared.maint_wake.notify_one();
        st = shared
            .spare_ready
            .wait_timeout(st, Duration::from_millis(100))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}
