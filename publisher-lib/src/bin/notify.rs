//! `notify`: publish, schedule or cancel one notification, or ask presence, from the shell,
//! for ops and scripts.
//!
//! ```text
//! notify --user 42 --type info --message "Parking B closes at 22:00"
//! notify --user 42 --event booking.expiring_soon --data '{"booking_id":1,"slot":"A-12","minutes_left":5}'
//! notify --user 42 --event booking.expired --data '{"booking_id":1,"slot":"A-12"}' --at +300 --key booking:1:expired
//! notify --cancel booking:1:expired
//! notify --presence --user 42 --user 43
//! ```
//!
//! The same rules as the gateway's `POST /api/publish`, `/api/schedule` and `/api/presence`
//! (publisher-lib's `Notification::from_fields`, `Publisher::schedule`, `cancel`, `presence`).

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use publisher::{
    ClusterConfig, ErrorKind, Level, Notification, Publisher, PublisherOptions, SentinelConfig,
    UserId,
};
use serde_json::{Map, Value};

const USAGE: &str = "\
usage: notify [--redis URL | --sentinels HOST:PORT,... --sentinel-master NAME |
               --cluster-nodes HOST:PORT,...]
              --user ID [--user ID ...] NOTIFICATION [--timeout-ms N]
       notify [REDIS] --user ID NOTIFICATION --at MS|+SECONDS --key KEY   (schedule)
       notify [REDIS] --cancel KEY
       notify [REDIS] --presence [--nodes] --user ID [--user ID ...]

NOTIFICATION is either
  --type success|info|warning|error --message TEXT [--event NAME] [--data JSON]
or a typed event, with its level and default message:
  --event NAME --data JSON [--message TEXT]
  (events and their data fields: docs/PROTOCOL.md)

--redis     Redis the gateways subscribe to; default $REDIS_URL, else redis://127.0.0.1:6379
--sentinels, --sentinel-master  instead of --redis, for a master watched by Redis Sentinel
            (the gateways' redis.sentinels and redis.sentinel_master; default
            $REDIS_SENTINELS and $REDIS_SENTINEL_MASTER); passwords from
            $REDIS_SENTINEL_PASSWORD (the sentinels') and $REDIS_PASSWORD (the master's)
--cluster-nodes  instead of --redis, seed nodes of a Redis Cluster (the gateways'
            redis.cluster_nodes; default $REDIS_CLUSTER_NODES); password from $REDIS_PASSWORD
--data      a JSON object, e.g. '{\"booking_id\":1881,\"slot\":\"A-12\",\"minutes_left\":5}'
--timeout-ms  upper bound for the whole call (default 2000)
--at        schedule instead of publishing now: due time in ms since the Unix epoch, or
            +SECONDS from now; with --key, the caller's name for the item (1-200 bytes of
            A-Z a-z 0-9 _ - . :). The same key again reschedules (docs/SCHEDULING.md)
--cancel    cancel the scheduled item with this key
--presence  print each user's open sockets across the fleet (--nodes: and on which nodes)

Publishing prints how many gateway nodes received it (0: the user has no browser open; not an
error); scheduling `scheduled: KEY at MS`; cancelling `cancelled: true` (false: no such item,
or it fired); presence one `USER: SOCKETS` line per user.
Exit status: 0 done, 1 Redis unavailable or too slow, 2 bad input.";

/// A command line that cannot be acted on; exit status 2.
struct BadInput(String);

/// Which Redis to publish through.
enum Target {
    Url(String),
    Sentinel(SentinelConfig),
    Cluster(ClusterConfig),
}

/// What the command line asks for.
enum Action {
    Publish {
        users: Vec<UserId>,
        notification: Notification,
    },
    Schedule {
        user: UserId,
        notification: Notification,
        at: SystemTime,
        key: String,
    },
    Cancel {
        key: String,
    },
    Presence {
        users: Vec<UserId>,
        with_nodes: bool,
    },
}

struct Args {
    redis: Target,
    action: Action,
    timeout: Duration,
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(BadInput(message)) => {
            eprintln!("notify: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("notify: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let options = PublisherOptions {
        pool_size: 1,
        timeout: args.timeout,
        ..Default::default()
    };
    let publisher = match args.redis {
        Target::Url(url) => Publisher::with_options(&url, options),
        Target::Sentinel(sentinel) => Publisher::with_sentinel(sentinel, options),
        Target::Cluster(cluster) => Publisher::with_cluster(cluster, options),
    };
    let publisher = match publisher {
        Ok(publisher) => publisher,
        Err(error) => return failed(error),
    };
    match args.action {
        Action::Publish {
            users,
            notification,
        } => {
            let result = match users.as_slice() {
                [user] => publisher.publish(*user, notification).await,
                users => publisher.publish_many(users, notification).await,
            };
            match result {
                Ok(receivers) => {
                    println!("receivers: {receivers}");
                    if receivers == 0 {
                        eprintln!("notify: no gateway node holds a socket of this user right now (not an error; nothing is kept for later)");
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => failed(error),
            }
        }
        Action::Schedule {
            user,
            notification,
            at,
            key,
        } => match publisher.schedule(user, notification, at, &key).await {
            Ok(()) => {
                let ms = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
                println!("scheduled: {key} at {ms}");
                ExitCode::SUCCESS
            }
            Err(error) => failed(error),
        },
        Action::Cancel { key } => match publisher.cancel(&key).await {
            Ok(cancelled) => {
                println!("cancelled: {cancelled}");
                ExitCode::SUCCESS
            }
            Err(error) => failed(error),
        },
        Action::Presence { users, with_nodes } => {
            match publisher.presence(&users, with_nodes).await {
                Ok(answers) => {
                    for (user, presence) in users.iter().zip(answers) {
                        let nodes: Vec<String> = presence
                            .nodes
                            .iter()
                            .map(|(node, sockets)| format!("{node}: {sockets}"))
                            .collect();
                        if nodes.is_empty() {
                            println!("{user}: {}", presence.sockets);
                        } else {
                            println!("{user}: {} ({})", presence.sockets, nodes.join(", "));
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => failed(error),
            }
        }
    }
}

/// Prints the error; bad input exits 2, anything else (Redis down, too slow) 1.
fn failed(error: publisher::PublishError) -> ExitCode {
    eprintln!("notify: {error}");
    match error.kind() {
        ErrorKind::InvalidInput | ErrorKind::TooLarge => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// `--at`: milliseconds since the Unix epoch, or `+SECONDS` from now.
fn due_time(text: &str) -> Result<SystemTime, BadInput> {
    let bad = || {
        BadInput(format!(
            "--at {text:?}: expected milliseconds since the Unix epoch or +SECONDS"
        ))
    };
    if let Some(seconds) = text.strip_prefix('+') {
        let seconds: f64 = seconds.parse().map_err(|_| bad())?;
        let ahead = Duration::try_from_secs_f64(seconds).map_err(|_| bad())?;
        return Ok(SystemTime::now() + ahead);
    }
    let ms: u64 = text.parse().map_err(|_| bad())?;
    Ok(UNIX_EPOCH + Duration::from_millis(ms))
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, BadInput> {
    let mut redis = std::env::var("REDIS_URL").ok();
    let mut sentinels = std::env::var("REDIS_SENTINELS").ok();
    let mut sentinel_master = std::env::var("REDIS_SENTINEL_MASTER").ok();
    let mut cluster_nodes = std::env::var("REDIS_CLUSTER_NODES").ok();
    let mut users = Vec::new();
    let (mut level, mut message, mut event, mut data) = (None, None, None, None);
    let mut timeout = Duration::from_secs(2);
    let (mut at, mut key, mut cancel) = (None, None, None);
    let (mut presence, mut with_nodes) = (false, false);

    while let Some(flag) = argv.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let mut value = || {
            argv.next()
                .ok_or_else(|| BadInput(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--redis" => redis = Some(value()?),
            "--sentinels" => sentinels = Some(value()?),
            "--sentinel-master" => sentinel_master = Some(value()?),
            "--cluster-nodes" => cluster_nodes = Some(value()?),
            "--user" => {
                let id = value()?;
                users.push(
                    id.parse::<UserId>()
                        .map_err(|e| BadInput(format!("--user {id:?}: {e}")))?,
                );
            }
            "--type" => {
                let text = value()?;
                let parsed = text
                    .parse::<Level>()
                    .map_err(|e| BadInput(format!("--type {text:?}: {e}")))?;
                level = Some(parsed);
            }
            "--message" => message = Some(value()?),
            "--event" => event = Some(value()?),
            "--data" => {
                let text = value()?;
                let object = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(object)) => object,
                    Ok(_) => return Err(BadInput("--data must be a JSON object".into())),
                    Err(e) => return Err(BadInput(format!("--data is not JSON: {e}"))),
                };
                data = Some(object);
            }
            "--timeout-ms" => {
                let text = value()?;
                let ms = text
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        BadInput(format!(
                            "--timeout-ms {text:?}: expected milliseconds above 0"
                        ))
                    })?;
                timeout = Duration::from_millis(ms);
            }
            "--at" => at = Some(due_time(&value()?)?),
            "--key" => key = Some(value()?),
            "--cancel" => cancel = Some(value()?),
            "--presence" => presence = true,
            "--nodes" => with_nodes = true,
            other => return Err(BadInput(format!("unknown argument {other:?}"))),
        }
    }

    let notifying = level.is_some() || message.is_some() || event.is_some() || data.is_some();
    let action = if let Some(key) = cancel {
        if !users.is_empty() || notifying || at.is_some() || presence {
            return Err(BadInput(
                "--cancel takes only the key (and where Redis is)".into(),
            ));
        }
        Action::Cancel { key }
    } else if presence {
        if notifying || at.is_some() || key.is_some() {
            return Err(BadInput(
                "--presence takes only --user (and --nodes)".into(),
            ));
        }
        if users.is_empty() {
            return Err(BadInput("give at least one --user".into()));
        }
        Action::Presence { users, with_nodes }
    } else {
        let notification = match users.len() {
            0 => return Err(BadInput("give at least one --user".into())),
            _ => Notification::from_fields(
                level,
                message,
                event.as_deref(),
                data.unwrap_or_else(Map::new),
            )
            .map_err(|e| BadInput(e.to_string()))?,
        };
        match (at, key) {
            (None, None) => Action::Publish {
                users,
                notification,
            },
            (Some(at), Some(key)) => match users.as_slice() {
                [user] => Action::Schedule {
                    user: *user,
                    notification,
                    at,
                    key,
                },
                _ => {
                    return Err(BadInput(
                        "a scheduled item is for one --user (one key, one user)".into(),
                    ))
                }
            },
            (Some(_), None) => {
                return Err(BadInput(
                    "--at needs --key (your name for the item, to reschedule or cancel it)".into(),
                ))
            }
            (None, Some(_)) => return Err(BadInput("--key needs --at (when it is due)".into())),
        }
    };
    let sentinels = sentinels.filter(|s| !s.trim().is_empty());
    if let Some(nodes) = cluster_nodes.filter(|s| !s.trim().is_empty()) {
        if sentinels.is_some() || sentinel_master.is_some() {
            return Err(BadInput(
                "--cluster-nodes and --sentinels name two topologies: give one".into(),
            ));
        }
        let mut cluster =
            ClusterConfig::new(nodes.split(',').map(str::trim).filter(|a| !a.is_empty()));
        cluster.password = std::env::var("REDIS_PASSWORD").ok();
        return Ok(Some(Args {
            redis: Target::Cluster(cluster),
            action,
            timeout,
        }));
    }
    let redis = match (sentinels, sentinel_master) {
        (None, None) => Target::Url(redis.unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned())),
        (Some(_), None) => {
            return Err(BadInput(
                "--sentinels needs --sentinel-master (the name the sentinels monitor)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(BadInput(
                "--sentinel-master needs --sentinels (host:port,host:port,...)".into(),
            ))
        }
        (Some(list), Some(master)) => {
            let mut sentinel = SentinelConfig::new(
                list.split(',').map(str::trim).filter(|a| !a.is_empty()),
                master,
            );
            sentinel.sentinel_password = std::env::var("REDIS_SENTINEL_PASSWORD").ok();
            sentinel.password = std::env::var("REDIS_PASSWORD").ok();
            Target::Sentinel(sentinel)
        }
    };
    Ok(Some(Args {
        redis,
        action,
        timeout,
    }))
}
