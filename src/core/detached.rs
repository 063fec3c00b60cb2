//! Work that outlives the request that started it, such as a token refresh whose rotated refresh
//! token must be stored even if the browser has gone: counted, so that shutdown can wait for it
//! before the process exits.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static FINISHED: Notify = Notify::const_new();

/// Decrements the count when the task ends, however it ends.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        if RUNNING.fetch_sub(1, Ordering::AcqRel) == 1 {
            FINISHED.notify_waiters();
        }
    }
}

/// `tokio::spawn`, counted until the task ends.
pub fn spawn<F>(task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    RUNNING.fetch_add(1, Ordering::AcqRel);
    let running = Running;
    tokio::spawn(async move {
        let _running = running;
        task.await
    })
}

/// Returns once no counted task is running.
pub async fn finished() {
    loop {
        let notified = FINISHED.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if RUNNING.load(Ordering::Acquire) == 0 {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn finished_waits_for_a_counted_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = super::spawn(async move {
            let _ = rx.await;
        });
        let waiter = tokio::spawn(super::finished());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        tx.send(()).unwrap();
        task.await.unwrap();
        waiter.await.unwrap();
    }
}
