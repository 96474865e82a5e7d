//! How device worker threads are started.
//!
//! A device spawns its worker when the guest activates it, which happens on the vCPU thread
//! that wrote the status register. A thread inherits the seccomp filters of the thread that
//! creates it, so a worker spawned straight from a filtered vCPU thread could only make the
//! syscalls the vCPU filter allows. [`ThreadLauncher`] lets the embedder decide which thread
//! creates workers (the VMM's sandbox routes them through a launcher thread of its own, which
//! also installs the worker's filter); the default spawns from the calling thread. This module
//! owns only that hand-off; it never installs filters itself.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

/// The code a worker thread runs.
pub type ThreadBody = Box<dyn FnOnce() + Send + 'static>;

type LaunchFn = dyn Fn(String, ThreadBody) -> io::Result<JoinHandle<()>> + Send + Sync;

/// Starts a named thread running a body; cloned into every device that spawns workers.
#[derive(Clone)]
pub struct ThreadLauncher(Arc<LaunchFn>);

impl ThreadLauncher {
    /// A launcher that calls `launch(name, body)`, which must start `body` on a new thread
    /// and return its handle.
    pub fn new(
        launch: impl Fn(String, ThreadBody) -> io::Result<JoinHandle<()>> + Send + Sync + 'static,
    ) -> Self {
        ThreadLauncher(Arc::new(launch))
    }

    /// The default: spawns from the calling thread with `std::thread::Builder`.
    pub fn direct() -> Self {
        Self::new(|name, body| std::thread::Builder::new().name(name).spawn(body))
    }

    /// Starts `body` on a new thread called `name`.
    pub fn launch(&self, name: &str, body: ThreadBody) -> io::Result<JoinHandle<()>> {
        (self.0)(name.to_string(), body)
    }
}

impl Default for ThreadLauncher {
    fn default() -> Self {
        Self::direct()
    }
}

impl std::fmt::Debug for ThreadLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadLauncher")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_custom_launcher_runs_the_body_on_its_thread() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = calls.clone();
        let launcher = ThreadLauncher::new(move |name, body| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::Builder::new().name(name).spawn(body)
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = launcher
            .launch(
                "rf-test",
                Box::new(move || {
                    let _ = tx.send(std::thread::current().name().map(String::from));
                }),
            )
            .expect("spawn");
        handle.join().expect("join");
        assert_eq!(rx.recv().expect("name"), Some("rf-test".to_string()));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
