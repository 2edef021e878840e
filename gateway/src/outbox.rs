//! A socket's bounded queue: the hub pushes frames without waiting, the socket's task awaits
//! them.
//!
//! It replaces a tokio `mpsc` channel, which allocates its first block of 32 slots and its
//! semaphore with the channel: about 800 bytes per socket, paid by every idle socket. This one
//! is a mutex around a `VecDeque` that allocates on the first frame and is released when it
//! drains (about 100 bytes while idle). Its semantics are the channel's: bounded (a push into a
//! full queue fails, and the hub then evicts the socket), frames queued before the sender went
//! away are still received, then the end.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use crate::hub::QueuedFrame;

/// A queue with room for `capacity` frames: the hub's end and the socket's end.
pub fn outbox(capacity: usize) -> (OutboxSender, OutboxReceiver) {
    let shared = Arc::new(Shared {
        capacity,
        state: Mutex::new(State::default()),
    });
    (OutboxSender(shared.clone()), OutboxReceiver(shared))
}

struct Shared {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<QueuedFrame>,
    waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section below leaves the state consistent: a panic elsewhere while
        // it was held changes nothing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds `capacity` frames: the socket is not keeping up.
    Full,
    /// The socket's task has ended.
    Closed,
}

/// The hub's end. Dropping it ends the queue once the frames in it are received.
pub struct OutboxSender(Arc<Shared>);

impl OutboxSender {
    /// Queues `frame` without waiting.
    pub fn try_push(&self, frame: QueuedFrame) -> Result<(), PushError> {
        let mut state = self.0.lock();
        if state.receiver_gone {
            return Err(PushError::Closed);
        }
        if state.queue.len() >= self.0.capacity {
            return Err(PushError::Full);
        }
        state.queue.push_back(frame);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl Drop for OutboxSender {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.sender_gone = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Nothing to receive now ([`OutboxReceiver::try_recv`]).
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// The queue is empty; more may come.
    Empty,
    /// The queue is empty and its sender is gone.
    Disconnected,
}

/// The socket's end.
pub struct OutboxReceiver(Arc<Shared>);

impl OutboxReceiver {
    /// The next frame, or `None` once the sender is gone and every frame was received.
    /// Cancel-safe: a frame is taken only when this returns it.
    pub async fn recv(&mut self) -> Option<QueuedFrame> {
        poll_fn(|cx| match self.try_recv() {
            Ok(frame) => Poll::Ready(Some(frame)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => {
                let mut state = self.0.lock();
                // Pushed or dropped between the two locks: look again.
                if !state.queue.is_empty() || state.sender_gone {
                    drop(state);
                    cx.waker().wake_by_ref();
                } else if !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }

    pub fn try_recv(&mut self) -> Result<QueuedFrame, TryRecvError> {
        let mut state = self.0.lock();
        match state.queue.pop_front() {
            Some(frame) => {
                // Drained: give back what a burst made it allocate.
                if state.queue.is_empty() && state.queue.capacity() > 8 {
                    state.queue = VecDeque::new();
                }
                Ok(frame)
            }
            None if state.sender_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver_gone = true;
        let queued = std::mem::take(&mut state.queue);
        state.waker = None;
        drop(state);
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Frame;

    fn frame(n: u8) -> QueuedFrame {
        Arc::new(Frame::new(None, format!("{n}").into()))
    }

    #[test]
    fn bounded_and_in_order() {
        let (tx, mut rx) = outbox(2);
        tx.try_push(frame(1)).unwrap();
        tx.try_push(frame(2)).unwrap();
        assert_eq!(tx.try_push(frame(3)), Err(PushError::Full));
        assert_eq!(&*rx.try_recv().unwrap().text, "1");
        tx.try_push(frame(3)).unwrap();
        assert_eq!(&*rx.try_recv().unwrap().text, "2");
        assert_eq!(&*rx.try_recv().unwrap().text, "3");
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
    }

    #[test]
    fn frames_queued_before_the_sender_left_are_received_then_the_end() {
        let (tx, mut rx) = outbox(4);
        tx.try_push(frame(1)).unwrap();
        drop(tx);
        assert_eq!(&*rx.try_recv().unwrap().text, "1");
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
    }

    #[test]
    fn a_push_after_the_receiver_left_fails() {
        let (tx, rx) = outbox(4);
        drop(rx);
        assert_eq!(tx.try_push(frame(1)), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn recv_waits_for_a_push_or_the_end() {
        let (tx, mut rx) = outbox(4);
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await.map(|f| f.text.to_string());
            let end = rx.recv().await;
            (first, end.is_none())
        });
        tokio::task::yield_now().await;
        tx.try_push(frame(7)).unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(waiting.await.unwrap(), (Some("7".to_string()), true));
    }

    #[test]
    fn a_drained_queue_gives_its_memory_back() {
        let (tx, mut rx) = outbox(64);
        for n in 0..64 {
            tx.try_push(frame(n)).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(tx.0.lock().queue.capacity(), 0);
    }
}
