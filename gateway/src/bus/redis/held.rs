//! Live messages of users being (re)subscribed, held back until their catch-up from history
//! is delivered.
//!
//! The link keeps being read while users are subscribed (so that every other user's delivery
//! goes on), and a live message delivered before a user's catch-up would move the user's
//! cursor past what the catch-up still has to replay: the hub would drop those older frames
//! as duplicates. So the messages of the users of a subscribe step wait here, and are
//! delivered in order after their catch-up (the hub drops those the catch-up delivered).
//!
//! Bounded: at most `per_user` messages per held user. Beyond that a user's newer messages
//! are dropped here and the user is marked; [`Held::release`] hands the marked users back so
//! that they are caught up from history once more (their messages are stored there) while
//! still held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use publisher::wire::UserId;

use crate::hub::Hub;

pub(super) struct Held {
    /// Fast path: nobody is held (one atomic load per message).
    any: AtomicBool,
    users: Mutex<HashMap<UserId, Queue>>,
    per_user: usize,
}

#[derive(Default)]
struct Queue {
    payloads: Vec<Vec<u8>>,
    /// Messages were dropped: the user needs another catch-up.
    overflowed: bool,
}

impl Held {
    pub(super) fn new(per_user: usize) -> Self {
        Held {
            any: AtomicBool::new(false),
            users: Mutex::default(),
            per_user: per_user.max(1),
        }
    }

    fn users(&self) -> MutexGuard<'_, HashMap<UserId, Queue>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, messages of `users` wait until released.
    pub(super) fn hold(&self, users: &[UserId]) {
        let mut held = self.users();
        for user in users {
            held.entry(*user).or_default();
        }
        self.any.store(!held.is_empty(), Relaxed);
    }

    /// Delivers `payload` now, or keeps it if `user` is held.
    pub(super) fn deliver(&self, hub: &Hub, user: UserId, payload: &[u8]) {
        if self.any.load(Relaxed) {
            if let Some(queue) = self.users().get_mut(&user) {
                if queue.payloads.len() < self.per_user {
                    queue.payloads.push(payload.to_vec());
                } else {
                    queue.overflowed = true;
                }
                return;
            }
        }
        hub.deliver(user, payload);
    }

    /// Delivers what was held for `users`, in order, and stops holding them, except those
    /// whose messages overflowed: those stay held (with nothing queued) and are returned, to
    /// be caught up from history again and then released.
    pub(super) fn release(&self, hub: &Hub, users: &[UserId]) -> Vec<UserId> {
        let mut again = Vec::new();
        let mut held = self.users();
        for user in users {
            let Some(queue) = held.get_mut(user) else {
                continue;
            };
            let payloads = std::mem::take(&mut queue.payloads);
            if std::mem::take(&mut queue.overflowed) {
                again.push(*user);
            } else {
                held.remove(user);
            }
            // Delivered under the lock: a message read meanwhile must not overtake these.
            for payload in payloads {
                hub.deliver(*user, &payload);
            }
        }
        self.any.store(!held.is_empty(), Relaxed);
        again
    }

    /// Stops holding `users` whatever overflowed (the link is being given up: everything is
    /// caught up again on the next one).
    pub(super) fn release_all(&self, hub: &Hub, users: &[UserId]) {
        let mut held = self.users();
        for user in users {
            for payload in held.remove(user).map(|q| q.payloads).unwrap_or_default() {
                hub.deliver(*user, &payload);
            }
        }
        self.any.store(!held.is_empty(), Relaxed);
    }

    /// Stops holding anyone (a link ended with a step in flight).
    pub(super) fn clear(&self, hub: &Hub) {
        let mut held = self.users();
        for (user, queue) in held.drain() {
            for payload in queue.payloads {
                hub.deliver(user, &payload);
            }
        }
        self.any.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;

    fn user(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    fn note(id: u64) -> Vec<u8> {
        format!(r#"{{"id":"{id}-0","type":"info","message":"m"}}"#).into_bytes()
    }

    #[test]
    fn held_messages_wait_for_the_release_and_others_pass() {
        let hub = Hub::new(16, 1024, Arc::new(Metrics::default()));
        let mut a = hub.try_register(user(1), 4).unwrap();
        let mut b = hub.try_register(user(2), 4).unwrap();
        let held = Held::new(8);
        held.hold(&[user(1)]);
        held.deliver(&hub, user(1), &note(5));
        held.deliver(&hub, user(2), &note(6));
        assert!(a.outbox.try_recv().is_err(), "held");
        assert!(b.outbox.try_recv().is_ok(), "not held");
        // The catch-up delivers an older frame first; then the held one follows.
        hub.deliver(user(1), &note(4));
        assert!(held.release(&hub, &[user(1)]).is_empty());
        let ids: Vec<_> = std::iter::from_fn(|| a.outbox.try_recv().ok())
            .map(|f| f.id.unwrap().to_string())
            .collect();
        assert_eq!(ids, ["4-0", "5-0"]);
        held.deliver(&hub, user(1), &note(7));
        assert!(a.outbox.try_recv().is_ok(), "released");
    }

    #[test]
    fn a_user_over_the_bound_is_handed_back_still_held() {
        let hub = Hub::new(16, 1024, Arc::new(Metrics::default()));
        let mut a = hub.try_register(user(1), 4).unwrap();
        let held = Held::new(2);
        held.hold(&[user(1)]);
        for id in 1..=3 {
            held.deliver(&hub, user(1), &note(id));
        }
        assert_eq!(held.release(&hub, &[user(1)]), vec![user(1)]);
        assert_eq!(
            std::iter::from_fn(|| a.outbox.try_recv().ok()).count(),
            2,
            "what was kept is delivered"
        );
        held.deliver(&hub, user(1), &note(4));
        assert!(a.outbox.try_recv().is_err(), "still held for its catch-up");
        assert!(held.release(&hub, &[user(1)]).is_empty());
        assert_eq!(a.outbox.try_recv().unwrap().id.unwrap().to_string(), "4-0");
    }
}
