//! The harness's tokio runtime.
//!
//! Linux delivers a child's parent-death signal when the *thread* that forked it exits,
//! and each Rust test runs on a thread of its own. So the harness never forks from a test
//! thread's runtime: PostgreSQL clusters are started by tasks on this runtime, whose
//! owning thread and workers live as long as the test binary (and `warden-actors`
//! forks the postmaster from its own long-lived spawner thread, created under this
//! runtime's handle on first use).
//!
//! [`block_on`] runs a future there from any thread, async test or not.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::Handle;

/// The runtime's handle, starting it on first use.
pub fn handle() -> &'static Handle {
    static HANDLE: OnceLock<Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("harness-runtime".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("harness-worker")
                    .enable_all()
                    .build()
                    .expect("cannot build the harness runtime");
                tx.send(runtime.handle().clone())
                    .expect("the harness is waiting for the runtime");
                // Never returns: the runtime and this thread live until the binary exits.
                runtime.block_on(std::future::pending::<()>());
            })
            .expect("cannot start the harness runtime thread");
        rx.recv().expect("the harness runtime thread died at start")
    })
}

/// Runs `future` on the harness runtime and waits for it. A panic inside the future is
/// re-raised here, with its original message.
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match try_block_on(future, None) {
        Some(Ok(value)) => value,
        Some(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Some(Err(error)) => panic!("harness task failed: {error}"),
        None => panic!("the harness runtime is gone"),
    }
}

/// Like [`block_on`], but never panics: `None` when `timeout` passed first, the
/// task's panic as an `Err`. For clean-up paths that may run while a test unwinds.
pub fn try_block_on<F>(
    future: F,
    timeout: Option<Duration>,
) -> Option<Result<F::Output, tokio::task::JoinError>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = handle();
    let (tx, rx) = std::sync::mpsc::channel();
    let task = handle.spawn(future);
    handle.spawn(async move {
        let _ = tx.send(task.await);
    });
    match timeout {
        Some(timeout) => rx.recv_timeout(timeout).ok(),
        None => rx.recv().ok(),
    }
}
