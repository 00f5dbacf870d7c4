//! A held log's writer thread: it owns the file and its `flock`, takes every queued record,
//! writes them, fsyncs once, rewrites the checkpoint once and answers each appender (group
//! commit). Appenders wait on a channel of their own: a blocking one for
//! [`AuditLog::append`](super::AuditLog::append), a tokio oneshot for
//! [`AuditLog::append_async`](super::AuditLog::append_async).

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use super::file::{Chain, Pending, Target};
use super::{MAX_FLUSH, Shared};
use crate::{Error, ErrorKind, Result};

/// Where an appender waits for its record's seq (or the flush's error).
enum Reply {
    Blocking(mpsc::SyncSender<Result<u64>>),
    Async(tokio::sync::oneshot::Sender<Result<u64>>),
}

impl Reply {
    fn send(self, result: Result<u64>) {
        // An appender that stopped waiting (a dropped future) needs no answer.
        let _ = match self {
            Reply::Blocking(tx) => tx.send(result).map_err(drop),
            Reply::Async(tx) => tx.send(result).map_err(drop),
        };
    }
}

struct Job {
    pending: Pending,
    reply: Reply,
}

/// The writer thread of a held log and the queue to it. Dropping it stops the thread, which
/// closes the file and so releases the lock.
#[derive(Debug)]
pub(super) struct Held {
    queue: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    target: Target,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

impl Held {
    /// Starts the writer for `file` (opened, locked and checked), whose chain ends at `chain`.
    pub(super) fn start(
        target: Target,
        file: File,
        chain: Chain,
        shared: Arc<Shared>,
    ) -> Result<Held> {
        let (queue, jobs) = mpsc::channel();
        let writer = Writer {
            target: target.clone(),
            file,
            chain,
            shared,
            recheck: false,
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(&jobs))
            .map_err(|e| target.fail("start the writer of", &e))?;
        Ok(Held {
            queue: Some(queue),
            thread: Some(thread),
            target,
        })
    }

    fn enqueue(&self, job: Job, shared: &Shared) -> Result<()> {
        shared.queued.fetch_add(1, Ordering::Relaxed);
        let sent = self.queue.as_ref().map(|q| q.send(job));
        if !matches!(sent, Some(Ok(()))) {
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(self.stopped());
        }
        Ok(())
    }

    fn stopped(&self) -> Error {
        Error::new(
            ErrorKind::Io,
            format!(
                "cannot write audit log {}: its writer stopped",
                self.target.path.display()
            ),
        )
        .with_hint("the request was refused because it could not be recorded; restart the broker")
    }

    /// Queues `pending` and blocks until the flush that covers it.
    pub(super) fn append(&self, pending: Pending, shared: &Shared) -> Result<u64> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.enqueue(
            Job {
                pending,
                reply: Reply::Blocking(tx),
            },
            shared,
        )?;
        rx.recv().map_err(|_| self.stopped())?
    }

    /// Queues `pending`; the receiver gets its seq (or the flush's error) once the flush that
    /// covers it is done.
    pub(super) fn submit(
        &self,
        pending: Pending,
        shared: &Shared,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<u64>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(
            Job {
                pending,
                reply: Reply::Async(tx),
            },
            shared,
        )?;
        Ok(rx)
    }

    pub(super) fn stopped_error(&self) -> Error {
        self.stopped()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Closing the queue ends the writer's loop once it has answered what was queued.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread that owns the held file.
struct Writer {
    target: Target,
    file: File,
    chain: Chain,
    shared: Arc<Shared>,
    /// A flush failed: the file's end is unknown until read and checked again.
    recheck: bool,
}

impl Writer {
    fn run(mut self, jobs: &mpsc::Receiver<Job>) {
        let mut batch: Vec<Job> = Vec::new();
        while let Ok(first) = jobs.recv() {
            #[cfg(feature = "testkit")]
            drop(self.shared.gate.lock().unwrap_or_else(|p| p.into_inner()));
            batch.push(first);
            while batch.len() < MAX_FLUSH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.shared
                .queued
                .fetch_sub(batch.len() as u64, Ordering::Relaxed);
            match self.flush(&batch) {
                Ok(first_seq) => {
                    self.shared.flushes.fetch_add(1, Ordering::Relaxed);
                    for (seq, job) in (first_seq..).zip(batch.drain(..)) {
                        job.reply.send(Ok(seq));
                    }
                }
                Err(e) => {
                    // Fail closed: no record of this flush counts as written.
                    self.recheck = true;
                    for job in batch.drain(..) {
                        job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
        // Every sender is gone: the file (and its lock) closes with `self`.
    }

    fn flush(&mut self, batch: &[Job]) -> Result<u64> {
        if self.recheck {
            self.chain = self
                .target
                .chain_at_end(&mut self.file, SystemTime::now())?;
            self.recheck = false;
        }
        #[cfg(feature = "testkit")]
        if self.shared.fail_next.swap(false, Ordering::SeqCst) {
            return Err(self.target.fail(
                "write",
                &std::io::Error::other("injected failure (testkit)"),
            ));
        }
        let pending: Vec<&Pending> = batch.iter().map(|j| &j.pending).collect();
        self.target.flush(&mut self.file, &mut self.chain, &pending)
    }
}
