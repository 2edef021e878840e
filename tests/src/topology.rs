//! Redis topologies on loopback for failover and sharding tests: a Sentinel set (one master,
//! its replicas, three sentinels) and a Redis Cluster (masters with one replica each), every
//! process on a free port of its own and killed when its handle drops.
//!
//! Waits poll the servers' own view (sentinels' master address, `ROLE`, `CLUSTER INFO`,
//! `CLUSTER SHARDS`), never a fixed sleep: a test continues as soon as the topology settled.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, kill, require_program, TempDir};

/// How long a failover may take here: sentinels notice a dead master after 1 s and cluster
/// nodes after their 1 s node timeout; elections and promotion add a few seconds on a busy
/// machine.
pub const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

/// One redis-server (or sentinel) process with a directory of its own, restartable on the
/// same port with the same arguments (and so the same `nodes.conf` for cluster nodes).
pub struct RedisNode {
    pub port: u16,
    /// `requirepass` of a data node, or of a sentinel.
    pub password: Option<String>,
    args: Vec<String>,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisNode {
    fn start_with_password(
        label: &str,
        port: u16,
        args: Vec<String>,
        password: Option<String>,
    ) -> Self {
        let mut node = RedisNode {
            port,
            password,
            args,
            dir: TempDir::new(label),
            child: None,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let program = require_program("redis-server", "redis-server");
        let child = Command::new(program)
            .args(&self.args)
            .current_dir(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server");
        self.child = Some(child);
        wait_until(
            crate::DEADLINE,
            &format!("port {} answers PING", self.port),
            || self.try_query::<String>(&mut redis::cmd("PING")).is_ok(),
        );
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir.0
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!(
                "redis://:{}@127.0.0.1:{}",
                publisher::wire::percent_encode(password),
                self.port
            ),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no shutdown, no last write, connections drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts it again on the same port, with the same arguments and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_connection_with_timeout(crate::DEADLINE)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.addr()))
    }

    pub fn try_query<T: redis::FromRedisValue>(
        &self,
        cmd: &mut redis::Cmd,
    ) -> redis::RedisResult<T> {
        let mut conn = redis::Client::open(self.url())?
            .get_connection_with_timeout(Duration::from_millis(500))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        cmd.query(&mut conn)
    }

    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        cmd.query(&mut self.connection())
            .unwrap_or_else(|e| panic!("{:?} on {}: {e}", cmd, self.addr()))
    }

    /// `ROLE`'s first element: "master", "slave" or "sentinel"; `None` when it does not answer.
    pub fn role(&self) -> Option<String> {
        let reply: Vec<redis::Value> = self.try_query(&mut redis::cmd("ROLE")).ok()?;
        match reply.first()? {
            redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            redis::Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// `CLIENT LIST` lines of connections holding at least one subscription of `kind`
    /// (`"sub"` for SUBSCRIBE, `"ssub"` for SSUBSCRIBE).
    pub fn subscriber_clients(&self, kind: &str) -> Vec<String> {
        let list: String = self.query(redis::cmd("CLIENT").arg("LIST"));
        let prefix = format!("{kind}=");
        list.lines()
            .filter(|line| {
                line.split(' ')
                    .any(|f| f.strip_prefix(&prefix).is_some_and(|n| n != "0"))
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `done` every 20 ms until it holds; panics naming `what` after `deadline`.
pub fn wait_until(deadline: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn server_args(port: u16) -> Vec<String> {
    ["--port", &port.to_string(), "--bind", "127.0.0.1"]
        .into_iter()
        .chain(["--save", "", "--appendonly", "no"])
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Sentinel

/// One master, its replicas and three sentinels watching it under [`SentinelSet::MASTER_NAME`]
/// (quorum 2, `down-after-milliseconds` 1000, `failover-timeout` 3000).
pub struct SentinelSet {
    /// The data nodes: index 0 started as master; after a failover any may be.
    pub servers: Vec<RedisNode>,
    pub sentinels: Vec<RedisNode>,
}

impl SentinelSet {
    pub const MASTER_NAME: &'static str = "gwmaster";

    /// Starts a master with `replicas` replicas and three sentinels, and waits until the
    /// replicas are in sync and every sentinel knows the replicas and the other sentinels
    /// (until then a failover could not happen).
    pub fn start(replicas: usize) -> Self {
        Self::start_secured(replicas, None, None)
    }

    /// Like [`SentinelSet::start`], with `password` required by the data nodes (and given by
    /// replicas and sentinels to their master) and `sentinel_password` by the sentinels.
    pub fn start_secured(
        replicas: usize,
        password: Option<&str>,
        sentinel_password: Option<&str>,
    ) -> Self {
        let mut servers = vec![data_node("sentinel-master", None, password)];
        for _ in 0..replicas {
            servers.push(data_node(
                "sentinel-replica",
                Some(servers[0].port),
                password,
            ));
        }
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = TempDir::new("sentinel");
            // A sentinel rewrites its configuration file: it must be writable and its own.
            let config = dir.0.join("sentinel.conf");
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\n\
                 sentinel monitor {name} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 3000\n\
                 sentinel parallel-syncs {name} 2\n",
                name = Self::MASTER_NAME,
                master = servers[0].port,
            );
            if let Some(password) = password {
                text += &format!("sentinel auth-pass {} {password:?}\n", Self::MASTER_NAME);
            }
            if let Some(password) = sentinel_password {
                // Sentinels authenticate to each other with their own requirepass.
                text += &format!("requirepass {password:?}\n");
            }
            std::fs::write(&config, text).expect("writing sentinel.conf");
            let args = vec![config.display().to_string(), "--sentinel".to_owned()];
            let mut node = RedisNode {
                port,
                password: sentinel_password.map(str::to_owned),
                args,
                dir,
                child: None,
            };
            node.spawn();
            sentinels.push(node);
        }
        let set = SentinelSet { servers, sentinels };
        set.wait_settled();
        set
    }

    /// Waits until every sentinel agrees on a master that says it is one, knows all the
    /// live replicas and the two other sentinels, and the replicas are linked to the master.
    pub fn wait_settled(&self) {
        let live_replicas = self.servers.iter().filter(|s| s.is_running()).count() - 1;
        wait_until(FAILOVER_DEADLINE, "the sentinel set settled", || {
            let Some(master) = self.master_port() else {
                return false;
            };
            let master_ok = self.servers.iter().any(|s| {
                s.port == master && s.is_running() && s.role().as_deref() == Some("master")
            });
            let links_up = self
                .servers
                .iter()
                .filter(|s| s.port != master && s.is_running())
                .all(|s| {
                    s.try_query::<String>(redis::cmd("INFO").arg("replication"))
                        .is_ok_and(|info| {
                            info.contains(&format!("master_port:{master}"))
                                && info.contains("master_link_status:up")
                        })
                });
            master_ok
                && links_up
                && self.sentinels.iter().all(|sentinel| {
                    let known = |what: &str| {
                        sentinel
                            .try_query::<Vec<redis::Value>>(
                                redis::cmd("SENTINEL").arg(what).arg(Self::MASTER_NAME),
                            )
                            .map_or(0, |v| v.len())
                    };
                    known("replicas") >= live_replicas && known("sentinels") == 2
                })
        });
    }

    /// The sentinels' addresses, `host:port` each.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisNode::addr).collect()
    }

    /// The master's port as the first answering sentinel sees it.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|sentinel| {
            let (_, port): (String, u16) = sentinel
                .try_query(
                    redis::cmd("SENTINEL")
                        .arg("GET-MASTER-ADDR-BY-NAME")
                        .arg(Self::MASTER_NAME),
                )
                .ok()?;
            Some(port)
        })
    }

    /// The current master's node.
    pub fn master(&mut self) -> &mut RedisNode {
        let port = self.master_port().expect("no sentinel answers");
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("the master is one of the set's servers")
    }

    /// SIGKILLs the current master; returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let master = self.master();
        master.kill();
        master.port
    }

    /// Waits until the sentinels promoted a replica other than `old_master`, it answers as
    /// master and the other live replicas follow it; returns its port.
    pub fn wait_failover(&self, old_master: u16) -> u16 {
        wait_until(FAILOVER_DEADLINE, "a replica was promoted", || {
            self.master_port().is_some_and(|p| p != old_master)
        });
        self.wait_settled();
        self.master_port().expect("a master after failover")
    }
}

/// A data node on a free port, replicating `replica_of` when given, requiring `password`
/// (and giving it to its master) when given.
fn data_node(label: &str, replica_of: Option<u16>, password: Option<&str>) -> RedisNode {
    let port = free_port();
    let mut args = server_args(port);
    if let Some(master) = replica_of {
        args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.to_string(),
        ]);
    }
    if let Some(password) = password {
        for flag in ["--requirepass", "--masterauth"] {
            args.extend([flag.to_owned(), password.to_owned()]);
        }
    }
    RedisNode::start_with_password(label, port, args, password.map(str::to_owned))
}

// ---------------------------------------------------------------------------------------
// Cluster

/// A Redis Cluster of `masters` masters with `replicas` replicas each, made with
/// `redis-cli --cluster create` (one master alone: `CLUSTER ADDSLOTSRANGE 0 16383`). Nodes run with a 1 s node timeout,
/// `cluster-replica-validity-factor 0` (a fresh replica may always take over) and
/// `cluster-require-full-coverage no` (the other shards keep serving while one is down).
pub struct Cluster {
    pub nodes: Vec<RedisNode>,
}

/// One master as `CLUSTER NODES` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub id: String,
    pub port: u16,
    /// Inclusive slot ranges.
    pub slots: Vec<(u16, u16)>,
}

impl Shard {
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

impl Cluster {
    pub fn start(masters: usize, replicas: usize) -> Self {
        Self::start_with(masters, replicas, None)
    }

    /// Every node with `requirepass` (and `masterauth`) `password`.
    pub fn start_secured(masters: usize, replicas: usize, password: &str) -> Self {
        Self::start_with(masters, replicas, Some(password))
    }

    fn start_with(masters: usize, replicas: usize, password: Option<&str>) -> Self {
        let redis_cli = require_program("redis-cli", "redis-tools");
        let nodes: Vec<RedisNode> = (0..masters * (1 + replicas))
            .map(|_| {
                let port = free_port();
                let mut args = server_args(port);
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-replica-validity-factor",
                        "0",
                        "--cluster-require-full-coverage",
                        "no",
                        // The default bus port (port + 10000) overflows for ephemeral ports.
                        "--cluster-port",
                        &free_port().to_string(),
                    ]
                    .map(str::to_owned),
                );
                if let Some(password) = password {
                    args.extend(
                        ["--requirepass", password, "--masterauth", password].map(str::to_owned),
                    );
                }
                RedisNode::start_with_password(
                    "cluster-node",
                    port,
                    args,
                    password.map(str::to_owned),
                )
            })
            .collect();
        if masters == 1 && replicas == 0 {
            // redis-cli --cluster create wants 3 masters: one node takes every slot itself.
            nodes[0].query::<()>(redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(0).arg(16383));
            let cluster = Cluster { nodes };
            cluster.wait_settled(1);
            return cluster;
        }
        let mut command = Command::new(redis_cli);
        if let Some(password) = password {
            command.env("REDISCLI_AUTH", password);
        }
        let output = command
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(RedisNode::addr))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("running redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Cluster { nodes };
        cluster.wait_settled(masters);
        cluster
    }

    /// Waits until every live node reports `cluster_state:ok`, sees `masters` masters
    /// covering all slots, and every live replica is linked to its master.
    pub fn wait_settled(&self, masters: usize) {
        wait_until(FAILOVER_DEADLINE, "the cluster settled", || {
            let views: Vec<Vec<Shard>> = self
                .nodes
                .iter()
                .filter(|n| n.is_running())
                .map(|n| {
                    let ok = n
                        .try_query::<String>(redis::cmd("CLUSTER").arg("INFO"))
                        .is_ok_and(|info| info.contains("cluster_state:ok"));
                    if ok {
                        n.try_query::<String>(redis::cmd("CLUSTER").arg("NODES"))
                            .map(|t| parse_shards(&t))
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    }
                })
                .collect();
            let replicas_linked = self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                n.role().as_deref() != Some("slave")
                    || n.try_query::<String>(redis::cmd("INFO").arg("replication"))
                        .is_ok_and(|info| info.contains("master_link_status:up"))
            });
            let covered = |view: &Vec<Shard>| {
                view.len() == masters
                    && view
                        .iter()
                        .flat_map(|s| &s.slots)
                        .map(|&(a, b)| usize::from(b - a) + 1)
                        .sum::<usize>()
                        == 16384
            };
            replicas_linked && views.iter().all(covered) && views.windows(2).all(|w| w[0] == w[1])
        });
    }

    /// Seed addresses, `host:port` each.
    pub fn seed_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::addr).collect()
    }

    /// Any live node.
    pub fn any_node(&self) -> &RedisNode {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a live cluster node")
    }

    /// The masters serving slots, as a live node sees them.
    pub fn shards(&self) -> Vec<Shard> {
        parse_shards(
            &self
                .any_node()
                .query::<String>(redis::cmd("CLUSTER").arg("NODES")),
        )
    }

    /// The slot of `key` (a hash tag `{...}` counts alone), as Redis computes it.
    pub fn keyslot(&self, key: &str) -> u16 {
        self.any_node()
            .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
    }

    /// The master serving `slot`.
    pub fn owner(&self, slot: u16) -> Shard {
        self.shards()
            .into_iter()
            .find(|s| s.owns(slot))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    pub fn node(&mut self, port: u16) -> &mut RedisNode {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// SIGKILLs the master serving `slot`; returns its port.
    pub fn kill_owner(&mut self, slot: u16) -> u16 {
        let port = self.owner(slot).port;
        self.node(port).kill();
        port
    }

    /// Waits until another node serves the slots `dead` served; returns the new owner's port.
    pub fn wait_failover(&self, dead: u16, slot: u16) -> u16 {
        let mut owner = 0;
        wait_until(
            FAILOVER_DEADLINE,
            "a replica took over the dead master's slots",
            || {
                owner = self
                    .nodes
                    .iter()
                    .filter(|n| n.is_running())
                    .find_map(|n| {
                        let text: String = n.try_query(redis::cmd("CLUSTER").arg("NODES")).ok()?;
                        let shard = parse_shards(&text).into_iter().find(|s| s.owns(slot))?;
                        (shard.port != dead && shard.port == n.port).then_some(shard.port)
                    })
                    .unwrap_or(0);
                owner != 0
            },
        );
        owner
    }

    /// Moves `slot` with its keys to the master on `to`, the way `redis-cli --cluster
    /// reshard` does: IMPORTING/MIGRATING, MIGRATE of the keys, then SETSLOT NODE on both
    /// sides and on every other master.
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.owner(slot);
        assert_ne!(from.port, to, "slot {slot} is already on {to}");
        let target = self
            .nodes
            .iter()
            .find(|n| n.port == to)
            .expect("target node");
        let source = self
            .nodes
            .iter()
            .find(|n| n.port == from.port)
            .expect("source node");
        let to_id: String = target.query(redis::cmd("CLUSTER").arg("MYID"));
        target.query::<()>(
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("IMPORTING")
                .arg(&from.id),
        );
        source.query::<()>(
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("MIGRATING")
                .arg(&to_id),
        );
        loop {
            let keys: Vec<String> = source.query(
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(100),
            );
            if keys.is_empty() {
                break;
            }
            source.query::<()>(
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(&keys),
            );
        }
        // The two sides first, as redis-cli does, so that clients are redirected right away.
        let mut owners: Vec<u16> = vec![to, from.port];
        let others: Vec<u16> = self.shards().iter().map(|s| s.port).collect();
        owners.extend(others.into_iter().filter(|p| *p != to && *p != from.port));
        for port in owners {
            if let Some(node) = self.nodes.iter().find(|n| n.port == port && n.is_running()) {
                node.query::<()>(
                    redis::cmd("CLUSTER")
                        .arg("SETSLOT")
                        .arg(slot)
                        .arg("NODE")
                        .arg(&to_id),
                );
            }
        }
        wait_until(
            FAILOVER_DEADLINE,
            "every node sees the slot's new owner",
            || {
                self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                    n.try_query::<String>(redis::cmd("CLUSTER").arg("NODES"))
                        .is_ok_and(|t| {
                            parse_shards(&t)
                                .iter()
                                .any(|s| s.port == to && s.owns(slot))
                        })
                })
            },
        );
    }
}

/// The masters with slots in a `CLUSTER NODES` reply (failed ones left out).
pub fn parse_shards(nodes: &str) -> Vec<Shard> {
    let mut shards: Vec<Shard> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = *fields.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let port = fields[1]
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let slots: Vec<(u16, u16)> = fields
                .iter()
                .skip(8)
                .filter(|f| !f.starts_with('['))
                .filter_map(|range| match range.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => range.parse().ok().map(|s| (s, s)),
                })
                .collect();
            (!slots.is_empty()).then(|| Shard {
                id: fields[0].to_owned(),
                port,
                slots,
            })
        })
        .collect();
    shards.sort_by_key(|s| s.port);
    for shard in &mut shards {
        shard.slots.sort_unstable();
    }
    shards
}
