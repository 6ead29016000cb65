//! Graceful shutdown, the mini-redis way: one signal every task listens
//! to, and a completion channel that closes when the last task holding a
//! [`Shutdown`] has finished.
//!
//! The signal is a `watch` (a broadcast that late subscribers also see);
//! completion is an `mpsc` whose senders live inside every `Shutdown`
//! clone, so [`Trigger::wait`] returns only when all of them are dropped.

use tokio::sync::{mpsc, watch};

/// Held by every long-running task: tells it when to stop, and by being
/// dropped tells the trigger that it has.
#[derive(Debug, Clone)]
pub struct Shutdown {
    signal: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
}

impl Shutdown {
    /// True once shutdown has begun.
    pub fn is_shutdown(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves when shutdown begins (at once if it already has).
    pub async fn recv(&mut self) {
        let _ = self.signal.wait_for(|s| *s).await;
    }
}

/// Starts the shutdown and waits for it to complete.
#[derive(Debug)]
pub struct Trigger {
    signal: watch::Sender<bool>,
    done: mpsc::Receiver<()>,
}

/// A connected pair.
pub fn channel() -> (Trigger, Shutdown) {
    let (signal, rx) = watch::channel(false);
    let (done_tx, done) = mpsc::channel(1);
    (
        Trigger { signal, done },
        Shutdown {
            signal: rx,
            _done: done_tx,
        },
    )
}

impl Trigger {
    /// Tells every task to stop.
    pub fn fire(&self) {
        self.signal.send_replace(true);
    }

    /// Waits until every `Shutdown` clone has been dropped.
    pub async fn wait(&mut self) {
        let _ = self.done.recv().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn completes_when_every_task_has_finished() {
        let (mut trigger, shutdown) = channel();
        let (finished_tx, mut finished) = mpsc::unbounded_channel();
        for i in 0..3 {
            let mut s = shutdown.clone();
            let f = finished_tx.clone();
            tokio::spawn(async move {
                s.recv().await;
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                f.send(i).unwrap();
            });
        }
        drop(shutdown);
        trigger.fire();
        trigger.wait().await;
        let mut got = Vec::new();
        while let Ok(i) = finished.try_recv() {
            got.push(i);
        }
        assert_eq!(got, [0, 1, 2]);
    }
}
