//! The maintenance thread: keeps a spare segment prepared (which is where a full disk
//! is detected) and garbage-collects segments, oldest first.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::format::{self, kind, HeaderCheck, Record, RECORD_HEADER};
use super::{fsutil, DefClass, Durable, Lsn, MsgId, Shared, State, StoreError};

pub(super) fn run(shared: Arc<Shared>) {
    let mut st = shared.lock();
    loop {
        if st.closing {
            return;
        }
        if st.spares.len() < super::SPARES && st.failed.is_none() {
            let seq = st.next_spare_seq;
            drop(st);
            let made = fsutil::prepare_segment(&shared.dir, seq, shared.opts.segment_size);
            st = shared.lock();
            match made {
                Ok(f) => {
                    st.spares.push_back((seq, f));
                    st.next_spare_seq = seq + 1;
                    st.prepared_upto = st.prepared_upto.max(seq);
                    if st.disk_full {
                        st.disk_full = false;
                        shared.disk_full_tx.send_replace(false);
                        tracing::info!(dir = %shared.dir.display(), "disk space available again; publishes accepted");
                    }
                    shared.spare_ready.notify_all();
                }
                Err(e) => {
                    if !st.disk_full {
                        st.disk_full = true;
                        shared.disk_full_tx.send_replace(true);
                        tracing::warn!(error = %e, "cannot prepare the next segment; refusing publishes until it can be made");
                    }
                }
            }
        }
        if shared.opts.background_gc && st.failed.is_none() && !st.closing {
            drop(st);
            if let Err(e) = pass(&shared, false) {
                tracing::warn!(error = %e, "store garbage collection stopped");
            }
            st = shared.lock();
        }
        if st.closing {
            return;
        }
        if st.spares.len() < super::SPARES && !st.disk_full && st.failed.is_none() {
            continue;
        }
        let wait = if st.spares.len() < super::SPARES {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        };
        st = shared
            .maint_wake
            .wait_timeout(st, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// [`super::Store::collect_garbage`]: passes until nothing more can be done, waiting
/// for compaction copies to become durable.
pub(super) fn collect_now(shared: &Shared) -> Result<u64, StoreError> {
    let before = shared.gc_deleted.load(Ordering::Relaxed);
    loop {
        match pass(shared, true)? {
            Some(d) => {
                d.wait_blocking()?;
            }
            None => return Ok(shared.gc_deleted.load(Ordering::Relaxed) - before),
        }
    }
}

/// What to do with the oldest segment.
enum Step {
    Stop,
    Delete(u64),
    Compact(u64),
}

/// One garbage-collection pass: deletes dead segments from the oldest on, and starts
/// compacting the oldest if it is mostly dead. Returns the last compaction copy's
/// [`Durable`] when `wait` is set and one is in flight.
fn pass(shared: &Shared, wait: bool) -> Result<Option<Durable>, StoreError> {
    let _gc = shared.gc_lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let step = {
            let st = shared.lock();
            next_step(shared, &st)
        };
        match step {
            Step::Stop => return Ok(None),
            Step::Delete(seq) => {
                let path = fsutil::segment_path(&shared.dir, seq);
                // Unlink strictly oldest first, each one durable before the next: a
                // settle must never outlive the publish it cancels.
                std::fs::remove_file(&path)
                    .map_err(|e| fsutil::io_err("delete segment", &path, e))?;
                fsutil::sync_dir(&shared.dir)?;
                shared.lock().segs.remove(&seq);
                shared.gc_deleted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(seq, "store segment deleted");
            }
            Step::Compact(seq) => {
                let last = compact(shared, seq)?;
                match last {
                    Some(d) if wait => return Ok(Some(d)),
                    // In the background, deletion waits for a later pass.
                    _ => return Ok(None),
                }
            }
        }
    }
}

fn next_step(shared: &Shared, st: &State) -> Step {
    let Some((&seq, s)) = st.segs.iter().next() else {
        return Step::Stop;
    };
    // Never delete the newest records: they carry the highest LSN (and so the next id).
    let later_records = st.segs.range(seq + 1..).any(|(_, s)| s.records > 0);
    if !s.sealed || !later_records {
        return Step::Stop;
    }
    if s.live_records == 0 {
        if shared.durable_lsn.load(Ordering::Acquire) >= s.relocated_until {
            return Step::Delete(seq);
        }
        return Step::Stop;
    }
    if st.disk_full {
        return Step::Stop;
    }
    let (written, live) = st
        .segs
        .values()
        .fold((0, 0), |(w, l), s| (w + s.written, l + s.live_bytes));
    if s.live_bytes * 2 < s.written || written > 4 * live + 2 * shared.opts.segment_size {
        Step::Compact(seq)
    } else {
        Step::Stop
    }
}

/// Copies the live records of segment `seq` to the head.
fn compact(shared: &Shared, seq: u64) -> Result<Option<Durable>, StoreError> {
    let (ids, keys) = {
        let st = shared.lock();
        let ids: Vec<MsgId> = st
            .msgs
            .iter()
            .filter(|(_, e)| e.place.is_some_and(|p| p.seq == seq))
            .map(|(id, _)| *id)
            .collect();
        let keys: Vec<(DefClass, Box<[u8]>)> = st
            .defs
            .iter()
            .filter(|(_, d)| d.place.is_some_and(|p| p.seq == seq))
            .map(|(k, _)| k.clone())
            .collect();
        (ids, keys)
    };
    let path = fsutil::segment_path(&shared.dir, seq);
    let data = fsutil::read_file(&path)?;
    let corrupt = |offset: u32, reason| StoreError::Corrupt {
        path: path.clone(),
        offset: u64::from(offset),
        reason,
        after: 0,
    };
    let mut last: Option<Durable> = None;
    let mut wake = false;
    let mut copied = 0u64;
    for chunk in ids.chunks(256) {
        let mut st = shared.lock();
        if st.failed.is_some() || st.closing {
            return Ok(None);
        }
        for id in chunk {
            let Some(e) = st.msgs.get(id) else { continue };
            let Some(p) = e.place.filter(|p| p.seq == seq) else {
                continue;
            };
            let payload = record_payload(&data, p.offset, p.len)
                .ok_or_else(|| corrupt(p.offset, "record unreadable"))?;
            let (meta, body) = match format::decode(payload.0, payload.1) {
                Ok(Record::Publish { meta, body, .. })
                | Ok(Record::Relocated { meta, body, .. }) => (meta, body),
                _ => return Err(corrupt(p.offset, "indexed message record does not decode")),
            };
            let queues = e.queues.clone();
            let len =
                shared.check_len(format::relocated_len(queues.len(), meta.len(), body.len()))?;
            let id = *id;
            let (d, w) = shared.submit_locked(
                &mut st,
                kind::RELOCATED,
                len,
                |b| format::put_relocated(b, id, &queues, meta, body),
                |st, lsn| {
                    if let Some(e) = st.msgs.get_mut(&id) {
                        e.rec_lsn = lsn;
                        let old = e.place.take();
                        st.unlive(old);
                    }
                },
            );
            wake |= w;
            copied += 1;
            mark_relocated(&mut st, seq, d.lsn);
            last = Some(d);
        }
    }
    if !keys.is_empty() {
        let mut st = shared.lock();
        for key in &keys {
            let Some(p) = st
                .defs
                .get(key)
                .and_then(|d| d.place)
                .filter(|p| p.seq == seq)
            else {
                continue;
            };
            let payload = record_payload(&data, p.offset, p.len)
                .ok_or_else(|| corrupt(p.offset, "record unreadable"))?;
            let value = match format::decode(payload.0, payload.1) {
                Ok(Record::DefPut { value, .. }) => value,
                _ => {
                    return Err(corrupt(
                        p.offset,
                        "indexed definition record does not decode",
                    ))
                }
            };
            let len = shared.check_len(5 + key.1.len() + value.len())?;
            let (d, w) = shared.submit_locked(
                &mut st,
                kind::DEF_PUT,
                len,
                |b| format::put_def(b, key.0, &key.1, Some(value)),
                |st, lsn| {
                    if let Some(d) = st.defs.get_mut(key) {
                        d.rec_lsn = lsn;
                        let old = d.place.take();
                        st.unlive(old);
                    }
                },
            );
            wake |= w;
            copied += 1;
            mark_relocated(&mut st, seq, d.lsn);
            last = Some(d);
        }
    }
    if wake {
        shared.writer_wake.notify_one();
    }
    shared.gc_relocated.fetch_add(copied, Ordering::Relaxed);
    tracing::debug!(seq, copied, "store segment compacted");
    Ok(last)
}

fn mark_relocated(st: &mut State, seq: u64, lsn: Lsn) {
    if let Some(s) = st.segs.get_mut(&seq) {
        s.relocated_until = s.relocated_until.max(lsn);
    }
}

/// The kind and checked payload of the record at `offset`.
fn record_payload(data: &[u8], offset: u32, len: u32) -> Option<(u8, &[u8])> {
    let rec = data.get(offset as usize..offset as usize + len as usize)?;
    if rec.len() < RECORD_HEADER {
        return None;
    }
    match format::check_header(rec) {
        HeaderCheck::Ok(h) if RECORD_HEADER + h.len as usize == rec.len() => {
            let payload = &rec[RECORD_HEADER..];
            (format::crc(payload) == h.pcrc).then_some((h.kind, payload))
        }
        _ => None,
    }
}
