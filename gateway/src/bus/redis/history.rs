//! Reads users' history streams through the publisher's pool (on the master, whichever node
//! that is now): replays after an id, the newest id of each
//! user (where a subscription's cursor starts), and pages for the inbox endpoint.
//!
//! Resume replays go through a [`ReplayQueue`]: when a replica dies, thousands of its clients
//! resume on the survivors within a second, and one round trip each through a pool of a few
//! connections would queue most of them past their timeout (they would get the missed frame
//! instead of what they missed). The queue sends the replays waiting at once as one pipeline.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use publisher::wire::{StreamId, UserId};
use redis::Script;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::bus::BusError;
use crate::history::{self, Replay, StreamState};
use crate::hub::Frame;

static HISTORY_READ: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("history_read.lua")));

#[derive(Clone)]
pub(super) struct HistoryReader {
    pub(super) publisher: publisher::Publisher,
    pub(super) timeout: Duration,
    pub(super) max_age_ms: u64,
}

type StoredEntry = (String, Vec<(String, Vec<u8>)>);
type ReadReply = Option<(String, u64, u64, String, String, Vec<StoredEntry>)>;

impl HistoryReader {
    async fn query<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, BusError> {
        let run = async {
            let mut conn = self
                .publisher
                .connection()
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?;
            // The history script only reads: sending it again after NOSCRIPT is safe.
            let result = match &conn {
                // One pipeline may not span slots there: one command per user.
                publisher::PooledConnection::Cluster(cluster) => {
                    publisher::script::query_each(cluster, pipe, &HISTORY_READ).await
                }
                _ => publisher::script::query_loading(&mut conn, pipe, &HISTORY_READ).await,
            };
            result.map_err(|e| BusError::Unavailable(e.to_string()))
        };
        let result = tokio::time::timeout(self.timeout, run)
            .await
            .unwrap_or_else(|_| Err(BusError::Unavailable("history read timed out".into())));
        if result.is_err() && self.publisher.is_cluster() {
            // The next read opens a new cluster connection, which reads the slot map again
            // (the old one may still point at a master that died).
            self.publisher.forget_connections();
        }
        result
    }

    /// One replay of at most `limit` frames per `(user, after)`, in one round trip.
    pub(super) async fn replay_after(
        &self,
        reads: &[(UserId, StreamId)],
        limit: usize,
    ) -> Result<Vec<Replay>, BusError> {
        let reads: Vec<_> = reads
            .iter()
            .map(|(user, after)| (*user, *after, limit))
            .collect();
        self.replay_each(&reads).await
    }

    /// One replay per `(user, after, limit)`, in one round trip.
    async fn replay_each(
        &self,
        reads: &[(UserId, StreamId, usize)],
    ) -> Result<Vec<Replay>, BusError> {
        let mut pipe = redis::pipe();
        for (user, after, limit) in reads {
            pipe.invoke_script(
                HISTORY_READ
                    .key(self.publisher.history_key(*user))
                    .arg(format!("({after}"))
                    .arg(limit + 1),
            );
        }
        let replies: Vec<ReadReply> = self.query(&pipe).await?;
        Ok(reads
            .iter()
            .zip(replies)
            .map(|((_, after, limit), reply)| {
                let (state, entries) = match reply {
                    None => (None, Vec::new()),
                    Some((last, _added, _length, first, now_ms, entries)) => {
                        let state = StreamState {
                            last_id: last.parse().unwrap_or_default(),
                            first_id: first.parse().ok(),
                            now_ms: now_ms.parse().unwrap_or_else(|_| history::now_ms()),
                        };
                        (Some(state), parse_entries(entries))
                    }
                };
                history::plan_replay(*after, state, entries, *limit, self.max_age_ms)
            })
            .collect())
    }

    /// The newest stored id of each user, `ZERO` for users without history.
    pub(super) async fn newest_ids(&self, users: &[UserId]) -> Result<Vec<StreamId>, BusError> {
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("XREVRANGE")
                .arg(self.publisher.history_key(*user))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let replies: Vec<Vec<StoredEntry>> = self.query(&pipe).await?;
        Ok(replies
            .into_iter()
            .map(|newest| {
                newest
                    .first()
                    .and_then(|(id, _)| id.parse().ok())
                    .unwrap_or(StreamId::ZERO)
            })
            .collect())
    }

    pub(super) async fn page(
        &self,
        user: UserId,
        before: Option<StreamId>,
        limit: usize,
    ) -> Result<Vec<Frame>, BusError> {
        let mut pipe = redis::pipe();
        let end = before.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
        pipe.cmd("XREVRANGE")
            .arg(self.publisher.history_key(user))
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(limit);
        let (entries,): (Vec<StoredEntry>,) = self.query(&pipe).await?;
        Ok(parse_entries(entries)
            .into_iter()
            .filter_map(|(id, payload)| history::stored_frame(id, &payload))
            .collect())
    }
}

/// Most replays sent as one pipeline.
const REPLAY_BATCH: usize = 256;
/// Most replays waiting to be sent; a session finding it full waits (within its own timeout).
const REPLAY_QUEUE: usize = 4096;

/// Resume replays, batched: the requests waiting when a pipeline can be sent go out together
/// (at most [`REPLAY_BATCH`]), with at most `in_flight` pipelines at once, so that the pool's
/// other users (publishes, inbox pages, canaries) keep a connection. While the pipelines are
/// busy, requests gather in the bounded queue and the next pipeline takes them all.
#[derive(Clone)]
pub(super) struct ReplayQueue {
    tx: mpsc::Sender<ReplayRequest>,
}

struct ReplayRequest {
    read: (UserId, StreamId, usize),
    reply: oneshot::Sender<Result<Replay, BusError>>,
}

impl ReplayQueue {
    /// Starts the batching task; it ends when the last handle is dropped.
    pub(super) fn start(reader: HistoryReader, in_flight: usize) -> Self {
        let (tx, rx) = mpsc::channel(REPLAY_QUEUE);
        tokio::spawn(send_batches(reader, rx, in_flight.max(1)));
        ReplayQueue { tx }
    }

    pub(super) async fn replay_after(
        &self,
        user: UserId,
        after: StreamId,
        limit: usize,
    ) -> Result<Replay, BusError> {
        let (reply, answer) = oneshot::channel();
        let request = ReplayRequest {
            read: (user, after, limit),
            reply,
        };
        let stopped = || BusError::Unavailable("history reads stopped".into());
        self.tx.send(request).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn send_batches(
    reader: HistoryReader,
    mut requests: mpsc::Receiver<ReplayRequest>,
    in_flight: usize,
) {
    let permits = Arc::new(Semaphore::new(in_flight));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = requests.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < REPLAY_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        // Sessions that stopped waiting (their timeout, the client left) are not read for.
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let reader = reader.clone();
        tokio::spawn(async move {
            let reads: Vec<_> = batch.iter().map(|r| r.read).collect();
            match reader.replay_each(&reads).await {
                Ok(replays) => {
                    for (request, replay) in batch.into_iter().zip(replays) {
                        let _ = request.reply.send(Ok(replay));
                    }
                }
                Err(error) => {
                    for request in batch {
                        let _ = request.reply.send(Err(error.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

fn parse_entries(entries: Vec<StoredEntry>) -> Vec<(StreamId, Vec<u8>)> {
    entries
        .into_iter()
        .filter_map(|(id, fields)| {
            let id = id.parse().ok()?;
            let payload = fields
                .into_iter()
                .find(|(f, _)| f == publisher::wire::HISTORY_FIELD)?
                .1;
            Some((id, payload))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_without_a_readable_id_or_payload_field_are_skipped() {
        let field = publisher::wire::HISTORY_FIELD.to_owned();
        let entries: Vec<StoredEntry> = vec![
            ("5-1".into(), vec![(field.clone(), b"{\"a\":1}".to_vec())]),
            ("not-an-id".into(), vec![(field.clone(), b"{}".to_vec())]),
            ("6-0".into(), vec![("other".into(), b"{}".to_vec())]),
            (
                "7-2".into(),
                vec![("other".into(), Vec::new()), (field, b"{\"b\":2}".to_vec())],
            ),
        ];
        assert_eq!(
            parse_entries(entries),
            vec![
                (StreamId::new(5, 1), b"{\"a\":1}".to_vec()),
                (StreamId::new(7, 2), b"{\"b\":2}".to_vec()),
            ]
        );
    }
}
