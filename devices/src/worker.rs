//! Device worker threads, started with their device rather than when the guest's driver
//! activates it.
//!
//! A driver activates a device from a vCPU, so a thread started then would be the vCPU's
//! child and inherit its seccomp filter, which would then have to allow everything the
//! worker does. A [`WorkerThread`] is started by whoever creates the device (the main
//! thread, at boot), confines itself at once, and then runs one job per activation.

use std::io;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use crate::seccomp::Role;

type Job<R> = Box<dyn FnOnce() -> R + Send>;

/// The stack of every thread `vmm` starts: 1 MiB rather than Rust's 2 MiB. A thread stack of
/// exactly 2 MiB can sit 2 MiB-aligned right below guest RAM (itself aligned for huge pages),
/// and where transparent huge pages are `always` its first touch then faults in a whole
/// huge page: 2 MiB resident for a few KiB used. A smaller stack holds no aligned 2 MiB.
pub const THREAD_STACK: usize = 1 << 20;

/// A thread that runs jobs one at a time, under `role`'s confinement.
#[derive(Debug)]
pub struct WorkerThread<R: Send + 'static> {
    name: String,
    jobs: Option<Sender<Job<R>>>,
    results: Receiver<R>,
    busy: bool,
    handle: Option<JoinHandle<()>>,
}

impl<R: Send + 'static> WorkerThread<R> {
    /// Starts the thread `name`; it drops every capability and installs `role`'s seccomp
    /// filter before it takes its first job.
    pub fn spawn(name: &str, role: Role) -> io::Result<Self> {
        let (jobs, job_rx) = channel::<Job<R>>();
        let (result_tx, results) = channel();
        let label = name.to_string();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                if crate::confine::confine_thread(&label, role).is_err() {
                    // Unconfined, it takes no job: `start` reports the thread gone.
                    return;
                }
                while let Ok(job) = job_rx.recv() {
                    if result_tx.send(job()).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            name: name.to_string(),
            jobs: Some(jobs),
            results,
            busy: false,
            handle: Some(handle),
        })
    }

    /// Hands `job` to the thread. The caller makes sure the previous job has ended (with
    /// [`WorkerThread::wait`]).
    pub fn start(&mut self, job: impl FnOnce() -> R + Send + 'static) -> io::Result<()> {
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("worker stopped"))?;
        jobs.send(Box::new(job))
            .map_err(|_| io::Error::other(format!("{}: the worker thread is gone", self.name)))?;
        self.busy = true;
        Ok(())
    }

    /// Whether a job was started and has not been waited for.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Waits for the running job to end and returns its result; `None` when no job runs
    /// or the thread died (a panic in the job).
    pub fn wait(&mut self) -> Option<R> {
        if !std::mem::take(&mut self.busy) {
            return None;
        }
        self.results.recv().ok()
    }
}

impl<R: Send + 'static> Drop for WorkerThread<R> {
    fn drop(&mut self) {
        // The job, if one runs, was told to stop by its owner; closing the channel ends
        // the thread's loop.
        self.jobs = None;
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            log::error!("{}: the worker thread panicked", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_one_after_another_on_one_thread() {
        let mut w = WorkerThread::spawn("test-worker", Role::BlockWorker).unwrap();
        assert_eq!(w.wait(), None, "no job yet");
        w.start(|| std::thread::current().id()).unwrap();
        let first = w.wait().unwrap();
        w.start(|| std::thread::current().id()).unwrap();
        let second = w.wait().unwrap();
        assert_eq!(first, second);
        assert_ne!(first, std::thread::current().id());
    }

    #[test]
    fn a_panicking_job_is_reported_not_hung() {
        let mut w = WorkerThread::<u32>::spawn("test-panic", Role::BlockWorker).unwrap();
        w.start(|| panic!("job failed")).unwrap();
        assert_eq!(w.wait(), None);
        assert!(w.start(|| 1).is_err() || w.wait().is_none());
    }
}
