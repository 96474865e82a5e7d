//! The launcher thread: starts device worker threads on behalf of vCPU threads.
//!
//! A guest activates a device from a vCPU thread, and a thread created there would inherit
//! the vCPU's seccomp filter on top of its own. So the VMM starts this one thread before any
//! filter exists; it installs the launcher filter (the worker's list plus thread creation)
//! and then, for each request, creates the worker thread, which installs the worker filter
//! before it runs the device's code. Requests and replies travel over channels; the thread
//! ends when the last [`ThreadLauncher`] clone is dropped.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::thread::{ThreadBody, ThreadLauncher};

use super::seccomp::{self, ThreadKind};
use super::{Programs, SandboxError};

struct Job {
    name: String,
    body: ThreadBody,
    reply: mpsc::SyncSender<std::io::Result<JoinHandle<()>>>,
}

/// Starts the launcher thread; returns the launcher devices use and the thread's handle.
pub(super) fn start(
    programs: Arc<Programs>,
    violation: Option<ThreadKind>,
    keep_caps: u64,
) -> Result<(ThreadLauncher, JoinHandle<()>), SandboxError> {
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), SandboxError>>(1);
    let handle = std::thread::Builder::new()
        .name("rf-launcher".into())
        .spawn(move || {
            // Started before the VMM thread drops its capabilities: drop ours now, bounding
            // set included (workers inherit it).
            let installed = super::privileges::drop_capabilities(keep_caps)
                .and_then(|_| seccomp::install(ThreadKind::Launcher, &programs.launcher));
            let ok = installed.is_ok();
            let _ = ready_tx.send(installed);
            if !ok {
                return;
            }
            super::test_violation(violation, ThreadKind::Launcher);
            for job in jobs_rx {
                let programs = programs.clone();
                let body = job.body;
                let vsock = job.name == devices::vsock::WORKER_THREAD;
                let spawned = std::thread::Builder::new().name(job.name).spawn(move || {
                    let filter = if vsock {
                        &programs.vsock_worker
                    } else {
                        &programs.worker
                    };
                    if let Err(e) = seccomp::install(ThreadKind::Worker, filter) {
                        // Never run a device unfiltered when filters were asked for.
                        eprintln!("ringfence: error: {e}");
                        std::process::exit(seccomp::VIOLATION_STATUS);
                    }
                    super::test_violation(violation, ThreadKind::Worker);
                    body();
                });
                let _ = job.reply.send(spawned);
            }
        })
        .map_err(SandboxError::Launcher)?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(SandboxError::Privileges(
                "the launcher thread ended before it was ready".into(),
            ))
        }
    }
    let jobs = Mutex::new(jobs_tx);
    let launcher = ThreadLauncher::new(move |name, body| {
        let gone = || std::io::Error::other("the ringfence launcher thread is gone");
        let (reply, answer) = mpsc::sync_channel(1);
        jobs.lock()
            .map_err(|_| gone())?
            .send(Job { name, body, reply })
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    });
    Ok((launcher, handle))
}
