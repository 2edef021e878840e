//! Notification history: what a reconnecting client (or a node whose Redis link came back)
//! is replayed, and the honest "you may have missed some" frame when history cannot tell.
//!
//! Both buses keep a bounded per-user history with ids that increase per user (Redis: one
//! stream per user, written atomically with the PUBLISH by publisher-lib's script; memory: a
//! ring per user). Reading it yields a [`StreamState`] plus the newest entries after an id;
//! [`plan_replay`] turns that into what to send.

use std::collections::{HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use publisher::wire::{self, StreamId, UserId};
use serde_json::json;

use crate::hub::Frame;

/// What a history read found, besides the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    /// The id of the newest notification ever stored for the user.
    pub last_id: StreamId,
    /// The oldest id still retained, `None` when everything was trimmed.
    pub first_id: Option<StreamId>,
    /// The history's clock (milliseconds since the epoch), for the age rule.
    pub now_ms: u64,
}

/// What to send a client that last saw `after`.
#[derive(Debug, Default)]
pub struct Replay {
    /// Sent first when notifications after `after` may be gone.
    pub missed: Option<Frame>,
    /// Oldest first, each with its id spliced in.
    pub entries: Vec<Frame>,
}

impl Replay {
    /// The id a client is caught up to after this replay, if any frame carries one.
    pub fn last_id(&self) -> Option<StreamId> {
        self.entries
            .last()
            .or(self.missed.as_ref())
            .and_then(|f| f.id)
    }
}

/// Decides the replay for a client that last saw `after`.
///
/// `state` is `None` when the user has no history at all (never notified, or expired).
/// `newest_first` are up to `limit + 1` entries after `after`, newest first, with their
/// stored payloads. `max_age_ms` is the history's age limit (0: none).
pub fn plan_replay(
    after: StreamId,
    state: Option<StreamState>,
    mut newest_first: Vec<(StreamId, Vec<u8>)>,
    limit: usize,
    max_age_ms: u64,
) -> Replay {
    let Some(state) = state else {
        if after == StreamId::ZERO {
            // Asked for everything, and there never was (or is no longer) anything.
            return Replay::default();
        }
        // Nothing retained: whatever came after `after` expired with the history.
        return Replay {
            missed: Some(missed_frame(after, after)),
            entries: Vec::new(),
        };
    };
    if after > state.last_id {
        // An id this history never issued: the client's state is not ours. Reset it.
        return Replay {
            missed: Some(missed_frame(after, state.last_id)),
            entries: Vec::new(),
        };
    }
    let oldest_kept = state.first_id.unwrap_or_else(|| state.last_id.successor());
    // Ids only grow, so anything between `after` and the oldest entry kept is gone: trimmed,
    // or lost with a history that was created anew (Redis restarted without persistence).
    // ZERO means "from the very beginning", where nothing can have been skipped.
    let from_start = after == StreamId::ZERO;
    let lost_past_after = !from_start && after.successor() < oldest_kept;
    // A history that expired and was created anew may even start above `after`'s successor
    // by chance; an `after` older than the age limit may have lost entries that way.
    let expired_past_after =
        !from_start && max_age_ms > 0 && after.ms.saturating_add(max_age_ms) < state.now_ms;
    let too_many = newest_first.len() > limit;
    newest_first.truncate(limit);
    newest_first.reverse();
    let entries: Vec<Frame> = newest_first
        .into_iter()
        .filter_map(|(id, payload)| stored_frame(id, &payload))
        .collect();
    let missed = (lost_past_after || expired_past_after || too_many).then(|| {
        // Resuming from just before the first replayed entry replays it again; with nothing
        // to replay, from the newest id.
        let resume = entries
            .first()
            .and_then(|f| f.id)
            .map_or(state.last_id, predecessor);
        missed_frame(after, resume)
    });
    Replay { missed, entries }
}

/// A stored payload as clients receive it: with its id as the first field.
pub fn stored_frame(id: StreamId, payload: &[u8]) -> Option<Frame> {
    let framed = wire::with_id(id, payload)?;
    let text = bytestring::ByteString::try_from(framed).ok()?;
    Some(Frame::new(Some(id), text))
}

/// The frame telling a client that notifications after `since` may not be delivered.
///
/// It has the shape of a notification, so today's frontend shows it as a warning toast; new
/// clients recognise `event` and refetch. Its `id` is where to resume from next time.
pub fn missed_frame(since: StreamId, resume: StreamId) -> Frame {
    let body = json!({
        "id": resume.to_string(),
        "type": "warning",
        "message": "Some notifications could not be delivered while you were away. Refresh to see everything.",
        "event": MISSED_EVENT,
        "data": { "since": since.to_string() },
    });
    Frame::new(Some(resume), body.to_string().into())
}

/// The `event` of the missed-notifications frame.
pub const MISSED_EVENT: &str = "gateway.missed";

fn predecessor(id: StreamId) -> StreamId {
    match id.seq.checked_sub(1) {
        Some(seq) => StreamId::new(id.ms, seq),
        None => StreamId::new(id.ms.saturating_sub(1), u64::MAX),
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The single-node history: a bounded ring of recent notifications per user.
pub struct MemoryHistory {
    max_len: usize,
    max_age_ms: u64,
    last_issued: StreamId,
    users: HashMap<UserId, UserHistory>,
    appends: u64,
}

struct UserHistory {
    entries: VecDeque<(StreamId, Vec<u8>)>,
    last_id: StreamId,
}

impl MemoryHistory {
    pub fn new(max_len: usize, max_age_ms: u64) -> Self {
        MemoryHistory {
            max_len: max_len.max(1),
            max_age_ms,
            last_issued: StreamId::ZERO,
            users: HashMap::new(),
            appends: 0,
        }
    }

    /// Stores a notification and returns its id (the same `<ms>-<seq>` form Redis uses).
    pub fn append(&mut self, user: UserId, payload: Vec<u8>) -> StreamId {
        let now = now_ms();
        let id = if now > self.last_issued.ms {
            StreamId::new(now, 0)
        } else {
            self.last_issued.successor()
        };
        self.last_issued = id;
        let (max_len, max_age_ms) = (self.max_len, self.max_age_ms);
        let history = self.users.entry(user).or_insert_with(|| UserHistory {
            entries: VecDeque::new(),
            last_id: StreamId::ZERO,
        });
        history.entries.push_back((id, payload));
        history.last_id = id;
        while history.entries.len() > max_len
            || (max_age_ms > 0
                && history
                    .entries
                    .front()
                    .is_some_and(|(old, _)| old.ms.saturating_add(max_age_ms) < now))
        {
            history.entries.pop_front();
        }
        // Users nobody notified for longer than the age limit are forgotten, as Redis expires
        // their streams: a sweep every 1024 appends keeps memory bounded without a task of
        // its own (amortised: users / 1024 visited per append).
        self.appends += 1;
        if max_age_ms > 0 && self.appends % 1024 == 0 {
            self.users
                .retain(|_, h| h.last_id.ms.saturating_add(max_age_ms) >= now);
        }
        id
    }

    /// The user's history state and up to `count` entries after `after`, newest first.
    pub fn read_after(
        &self,
        user: UserId,
        after: StreamId,
        count: usize,
    ) -> (Option<StreamState>, Vec<(StreamId, Vec<u8>)>) {
        let Some(history) = self.users.get(&user) else {
            return (None, Vec::new());
        };
        let state = StreamState {
            last_id: history.last_id,
            first_id: history.entries.front().map(|(id, _)| *id),
            now_ms: now_ms(),
        };
        let entries = history
            .entries
            .iter()
            .rev()
            .take_while(|(id, _)| *id > after)
            .take(count)
            .cloned()
            .collect();
        (Some(state), entries)
    }

    /// Up to `count` entries older than `before` (all when `None`), newest first.
    pub fn page(
        &self,
        user: UserId,
        before: Option<StreamId>,
        count: usize,
    ) -> Vec<(StreamId, Vec<u8>)> {
        let Some(history) = self.users.get(&user) else {
            return Vec::new();
        };
        history
            .entries
            .iter()
            .rev()
            .filter(|(id, _)| before.is_none_or(|b| *id < b))
            .take(count)
            .cloned()
            .collect()
    }

    /// The newest id stored for the user.
    pub fn last_id(&self, user: UserId) -> Option<StreamId> {
        self.users.get(&user).map(|h| h.last_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTE: &[u8] = br#"{"type":"info","message":"m"}"#;

    fn user() -> UserId {
        UserId::new(1).unwrap()
    }

    fn ids(replay: &Replay) -> Vec<StreamId> {
        replay.entries.iter().map(|f| f.id.unwrap()).collect()
    }

    #[test]
    fn resume_replays_everything_after_the_id_in_order() {
        let mut history = MemoryHistory::new(100, 0);
        let all: Vec<StreamId> = (0..5)
            .map(|_| history.append(user(), NOTE.to_vec()))
            .collect();
        let (state, entries) = history.read_after(user(), all[1], 11);
        let replay = plan_replay(all[1], state, entries, 10, 0);
        assert!(replay.missed.is_none());
        assert_eq!(ids(&replay), all[2..].to_vec());
        assert!(replay.entries[0]
            .text
            .starts_with(&format!(r#"{{"id":"{}","type""#, all[2])));
        assert_eq!(replay.last_id(), Some(all[4]));
    }

    #[test]
    fn an_id_older_than_history_gets_the_missed_frame_then_what_is_left() {
        let mut history = MemoryHistory::new(3, 0);
        let all: Vec<StreamId> = (0..6)
            .map(|_| history.append(user(), NOTE.to_vec()))
            .collect();
        let (state, entries) = history.read_after(user(), all[0], 11);
        let replay = plan_replay(all[0], state, entries, 10, 0);
        let missed = replay
            .missed
            .as_ref()
            .expect("entries 1 and 2 were trimmed");
        assert!(missed.text.contains(MISSED_EVENT));
        assert!(missed.id.unwrap() < all[3]);
        assert_eq!(ids(&replay), all[3..].to_vec());

        // The last id before the trim boundary lost nothing.
        let (state, entries) = history.read_after(user(), all[2], 11);
        assert!(plan_replay(all[2], state, entries, 10, 0).missed.is_none());
    }

    #[test]
    fn more_than_the_limit_replays_the_newest_and_says_so() {
        let mut history = MemoryHistory::new(100, 0);
        let all: Vec<StreamId> = (0..10)
            .map(|_| history.append(user(), NOTE.to_vec()))
            .collect();
        let (state, entries) = history.read_after(user(), StreamId::ZERO, 4);
        let replay = plan_replay(StreamId::ZERO, state, entries, 3, 0);
        assert!(replay.missed.is_some());
        assert_eq!(ids(&replay), all[7..].to_vec());
    }

    #[test]
    fn unknown_or_foreign_ids_are_never_a_silent_gap() {
        let history = MemoryHistory::new(10, 0);
        let (state, entries) = history.read_after(user(), StreamId::new(5, 0), 11);
        assert!(plan_replay(StreamId::new(5, 0), state, entries, 10, 0)
            .missed
            .is_some());

        let mut history = MemoryHistory::new(10, 0);
        let last = history.append(user(), NOTE.to_vec());
        let future = StreamId::new(last.ms + 1000, 0);
        let (state, entries) = history.read_after(user(), future, 11);
        let replay = plan_replay(future, state, entries, 10, 0);
        assert_eq!(
            replay.missed.unwrap().id,
            Some(last),
            "reset to what history knows"
        );
    }

    #[test]
    fn from_the_start_nothing_is_missed_whatever_the_age_limit() {
        let mut history = MemoryHistory::new(10, 1);
        history.append(user(), NOTE.to_vec());
        let (state, entries) = history.read_after(user(), StreamId::ZERO, 11);
        let replay = plan_replay(StreamId::ZERO, state, entries, 10, 1);
        assert!(replay.missed.is_none());
        assert_eq!(replay.entries.len(), 1);
    }

    #[test]
    fn a_history_created_anew_after_the_id_is_a_gap_even_untrimmed() {
        // Redis lost the stream and it was created again: its first entry is far above the
        // client's id, although nothing was ever trimmed from this incarnation.
        let state = StreamState {
            last_id: StreamId::new(900, 0),
            first_id: Some(StreamId::new(800, 0)),
            now_ms: 1000,
        };
        let entries = vec![
            (StreamId::new(900, 0), NOTE.to_vec()),
            (StreamId::new(800, 0), NOTE.to_vec()),
        ];
        let replay = plan_replay(StreamId::new(100, 0), Some(state), entries, 10, 0);
        assert!(replay.missed.is_some());
        assert_eq!(
            ids(&replay),
            vec![StreamId::new(800, 0), StreamId::new(900, 0)]
        );
    }

    #[test]
    fn ids_increase_even_within_one_millisecond() {
        let mut history = MemoryHistory::new(10, 0);
        let a = history.append(user(), NOTE.to_vec());
        let b = history.append(UserId::new(2).unwrap(), NOTE.to_vec());
        let c = history.append(user(), NOTE.to_vec());
        assert!(a < b && b < c);
        assert_eq!(
            history
                .page(user(), None, 10)
                .iter()
                .map(|e| e.0)
                .collect::<Vec<_>>(),
            vec![c, a]
        );
        assert_eq!(history.page(user(), Some(c), 10).len(), 1);
    }
}
