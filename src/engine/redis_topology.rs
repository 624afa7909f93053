//! Where the Redis engine's data lives: one server (`redis://`), a Redis
//! Cluster (`redis+cluster://H1:P1,H2:P2`), or a master followed through
//! Sentinel (`redis+sentinel://H1:P1,H2:P2/MASTER_NAME`). Every part of the
//! engine talks through [`RedisConn`], which sends each command where it
//! belongs: a round's keys share one hash tag, so each script call and each
//! stream read goes to the one master that holds the round.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, RedisFuture, Value};
use serde::Serialize;

use super::EngineError;

use super::redis_sentinel::{Follower, Sentinel};

/// Bounds on every Redis call, so a dead or stalled Redis becomes a fast 503.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> EngineError {
    EngineError::unavailable(cause)
}

/// The Redis deployment named by `--redis`; opens connections to it.
#[derive(Clone)]
pub struct Redis {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
    Sentinel(Arc<Sentinel>),
}

impl Redis {
    /// Reads the URL; a Sentinel deployment starts being followed here.
    pub async fn open(url: &str) -> Result<Self, EngineError> {
        let kind = if let Some(nodes) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = nodes.split(',').map(|n| format!("redis://{n}")).collect();
            let client = ClusterClientBuilder::new(nodes)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(2)
                .max_retry_wait(200)
                .build()
                .map_err(|e| unavailable(format!("--redis {url:?}: {e}")))?;
            Kind::Cluster(Box::new(client))
        } else if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (nodes, master) = rest.split_once('/').ok_or_else(|| {
                unavailable(format!(
                    "--redis {url:?}: expected redis+sentinel://H1:P1,H2:P2/MASTER_NAME"
                ))
            })?;
            Kind::Sentinel(Sentinel::start(nodes, master).await?)
        } else {
            let client = redis::Client::open(url)
                .map_err(|e| unavailable(format!("--redis {url:?}: {e}")))?;
            Kind::Single(client)
        };
        Ok(Self { kind })
    }

    /// `single`, `cluster` or `sentinel`.
    pub fn topology(&self) -> &'static str {
        match self.kind {
            Kind::Single(_) => "single",
            Kind::Cluster(_) => "cluster",
            Kind::Sentinel(_) => "sentinel",
        }
    }

    /// A connection that reconnects by itself (and, under Sentinel, moves
    /// to the new master after a failover).
    pub async fn connect(&self) -> Result<RedisConn, EngineError> {
        Ok(match &self.kind {
            Kind::Single(client) => RedisConn::Single(manager(client.clone()).await?),
            Kind::Cluster(client) => {
                RedisConn::Cluster(client.get_async_connection().await.map_err(unavailable)?)
            }
            Kind::Sentinel(sentinel) => RedisConn::Sentinel(sentinel.follower().await?),
        })
    }

    /// Every server of the deployment as one of its connections sees it:
    /// for `/readyz` and `/metrics`.
    pub async fn nodes(&self, conn: &mut RedisConn) -> Result<Vec<NodeState>, EngineError> {
        match &self.kind {
            Kind::Cluster(_) => {
                let text: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(conn)
                    .await
                    .map_err(unavailable)?;
                Ok(parse_cluster_nodes(&text))
            }
            Kind::Single(client) => {
                let address = client.get_connection_info().addr().to_string();
                Ok(parse_replication(&address, &replication(conn).await?))
            }
            Kind::Sentinel(sentinel) => {
                let address = sentinel.master();
                Ok(parse_replication(&address, &replication(conn).await?))
            }
        }
    }
}

async fn replication(conn: &mut RedisConn) -> Result<String, EngineError> {
    redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await
        .map_err(unavailable)
}

async fn manager(client: redis::Client) -> Result<ConnectionManager, EngineError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(unavailable)
}

/// A multiplexed connection to the deployment: clones share the sockets
/// and pipeline the commands of many requests.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<Follower>),
}

impl RedisConn {
    /// True when the client may send a command again by itself (the
    /// cluster client does, after a connection drops in a failover): a
    /// script call may then have run before without our knowing.
    pub fn resends_by_itself(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Masters Sentinel has named since start (0 for the other topologies):
    /// a change means the rounds must be reconciled on the new master, even
    /// one that served before and kept its `run_id` (a flip back).
    pub fn master_changes(&self) -> u64 {
        match self {
            Self::Sentinel(follower) => follower.master_changes(),
            Self::Single(_) | Self::Cluster(_) => 0,
        }
    }

    /// Sends `cmd` to the master that holds `key`, on the same socket as
    /// this connection's other commands to it: what `WAIT` needs, since it
    /// counts the writes of the socket it comes by.
    pub async fn on_master_of(&mut self, key: &str, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            Self::Cluster(conn) => {
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                conn.route_command(cmd.clone(), routing).await
            }
            _ => cmd.query_async(self).await,
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
            Self::Sentinel(follower) => {
                Box::pin(follower.send(async move |mut conn| conn.req_packed_command(cmd).await))
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(follower) => Box::pin(follower.send(async move |mut conn| {
                conn.req_packed_commands(pipeline, offset, count).await
            })),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// One Redis server of the deployment, as `/readyz` and `/metrics` show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeState {
    pub address: String,
    /// `master` or `replica`.
    pub role: String,
    /// `up`, or what is wrong (`down`, `failing`, `syncing`).
    pub state: String,
}

/// `CLUSTER NODES`: `<id> <ip:port@cport> <flags> <master> … <link-state> <slots…>`.
fn parse_cluster_nodes(text: &str) -> Vec<NodeState> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = fields.get(1)?.split('@').next()?.to_owned();
            let flags = fields.get(2)?;
            let link = fields.get(7)?;
            let role = if flags.contains("master") {
                "master"
            } else {
                "replica"
            };
            let state = if flags.contains("fail?") {
                "failing"
            } else if flags.split(',').any(|f| f == "fail") || *link != "connected" {
                "down"
            } else {
                "up"
            };
            Some(NodeState {
                address,
                role: role.to_owned(),
                state: state.to_owned(),
            })
        })
        .collect()
}

/// `INFO replication` of a master: itself, then `slaveN:ip=…,port=…,state=online,…`.
fn parse_replication(address: &str, info: &str) -> Vec<NodeState> {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let role = match field("role").as_str() {
        "master" => "master",
        _ => "replica",
    };
    let mut nodes = vec![NodeState {
        address: address.to_owned(),
        role: role.to_owned(),
        state: "up".to_owned(),
    }];
    for line in info.lines().filter(|l| l.starts_with("slave")) {
        let Some((_, values)) = line.split_once(':') else {
            continue;
        };
        let value = |name: &str| {
            values
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_default()
        };
        nodes.push(NodeState {
            address: format!("{}:{}", value("ip"), value("port")),
            role: "replica".to_owned(),
            state: match value("state") {
                "online" => "up".to_owned(),
                _ => "syncing".to_owned(),
            },
        });
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sentinel_url_without_its_master_name_is_refused_with_the_form() {
        let refused = Redis::open("redis+sentinel://127.0.0.1:26379").await;
        let message = refused.err().expect("refused").to_string();
        assert!(
            message.contains("redis+sentinel://H1:P1,H2:P2/MASTER_NAME"),
            "{message}"
        );
    }

    #[test]
    fn cluster_nodes_are_read_with_their_role_and_state() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1 4 connected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:30002@40002 master,fail - 1 1 2 disconnected
292f 127.0.0.1:30003@40003 master,fail? - 0 1 3 connected 10923-16383
";
        let nodes = parse_cluster_nodes(text);
        let seen: Vec<(&str, &str, &str)> = nodes
            .iter()
            .map(|n| (n.address.as_str(), n.role.as_str(), n.state.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("127.0.0.1:30004", "replica", "up"),
                ("127.0.0.1:30001", "master", "up"),
                ("127.0.0.1:30002", "master", "down"),
                ("127.0.0.1:30003", "master", "failing"),
            ]
        );
    }

    #[test]
    fn a_masters_replicas_are_read_from_its_replication_info() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
slave0:ip=127.0.0.1,port=7001,state=online,offset=42,lag=0\r\n\
slave1:ip=127.0.0.1,port=7002,state=wait_bgsave,offset=0,lag=0\r\n";
        let nodes = parse_replication("127.0.0.1:7000", info);
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].role, "master");
        assert_eq!(nodes[1].address, "127.0.0.1:7001");
        assert_eq!(nodes[1].state, "up");
        assert_eq!(nodes[2].state, "syncing");
    }
}
