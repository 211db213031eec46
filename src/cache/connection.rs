//! The app's one Redis connection type, over a single server or a Redis
//! Cluster, so every call site is the same for both.
//!
//! On a cluster every script and every multi-key command or pipeline must
//! stay within one hash slot: the cluster connection refuses a cross-slot
//! pipeline (CROSSSLOT) before sending it, and the server refuses a
//! cross-slot script. Keys of one room or one connection share a hash tag
//! (see [`super::keys`]); global keys (deadlines, indexes, the epoch,
//! tickets) are only ever used alone.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use secrecy::ExposeSecret;
use tokio::sync::OnceCell;

use crate::config::Settings;

/// Short timeouts and one retry: with Redis unreachable a request fails in
/// well under a second with a 503 instead of the client's default
/// multi-second backoff.
const CONNECTION_TIMEOUT: Duration = Duration::from_millis(500);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A cheap-to-clone connection to Redis that reconnects by itself.
#[derive(Clone)]
pub enum Redis {
    /// One server, multiplexed.
    Single(ConnectionManager),
    /// A Redis Cluster: commands are routed to the master of their key's slot.
    Cluster(LazyCluster),
}

/// A cluster connection made on first use, so the service starts (and serves
/// room metadata from Postgres) while the cluster is down, as it does with a
/// single lazy [`ConnectionManager`]. A failed attempt is retried by the
/// next command; once made, the connection follows topology changes itself.
#[derive(Clone)]
pub struct LazyCluster(Arc<ClusterState>);

struct ClusterState {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

impl LazyCluster {
    async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        self.0
            .connection
            .get_or_try_init(|| self.0.client.get_async_connection())
            .await
            .cloned()
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(manager) => manager.req_packed_command(cmd),
            Self::Cluster(cluster) => {
                Box::pin(async move { cluster.connection().await?.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(manager) => manager.req_packed_commands(cmd, offset, count),
            Self::Cluster(cluster) => Box::pin(async move {
                cluster
                    .connection()
                    .await?
                    .req_packed_commands(cmd, offset, count)
                    .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(manager) => manager.get_db(),
            // A cluster has database 0 only.
            Self::Cluster(_) => 0,
        }
    }
}

/// Connects lazily to the Redis `REDIS_URL` names: one server, or with
/// `METACAST_REDIS_CLUSTER` a cluster reached through its comma-separated
/// seed nodes.
pub fn connect(settings: &Settings) -> anyhow::Result<Redis> {
    let nodes = node_urls(settings)?;
    if settings.redis_cluster {
        let client = ClusterClient::builder(nodes)
            .retries(1)
            .min_retry_wait(50)
            .max_retry_wait(200)
            .connection_timeout(CONNECTION_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .tcp_settings(tcp_settings())
            .build()
            .context("REDIS_URL: not a valid list of Redis Cluster seed nodes")?;
        return Ok(Redis::Cluster(LazyCluster(Arc::new(ClusterState {
            client,
            connection: OnceCell::new(),
        }))));
    }
    let client = open(nodes[0])?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(200))
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let manager = ConnectionManager::new_lazy_with_config(client, config).context("REDIS_URL")?;
    Ok(Redis::Single(manager))
}

/// Clients for the events' wake-up subscription, to try in turn: the server,
/// or each seed node of the cluster. A cluster forwards every classic
/// PUBLISH to all its nodes, so one subscription on any node hears them all.
pub fn subscription_clients(settings: &Settings) -> anyhow::Result<Vec<redis::Client>> {
    node_urls(settings)?.into_iter().map(open).collect()
}

/// A client for one node, its commands sent as soon as they are written.
fn open(url: &str) -> anyhow::Result<redis::Client> {
    let info = url
        .into_connection_info()
        .with_context(|| format!("REDIS_URL: {url:?} is not a valid redis:// URL"))?;
    Ok(redis::Client::open(info.set_tcp_settings(tcp_settings()))?)
}

/// `TCP_NODELAY`, which redis-rs leaves off: with Nagle's algorithm a
/// command written while an earlier one is unacknowledged, or the tail of
/// one larger than a segment, waits for Redis' ACK, which Redis may delay
/// by 40 ms when it has nothing to answer yet.
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// The URLs in `REDIS_URL`: exactly one without cluster mode, at least one with.
fn node_urls(settings: &Settings) -> anyhow::Result<Vec<&str>> {
    let urls: Vec<&str> = settings
        .redis_url
        .expose_secret()
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect();
    match urls.len() {
        0 => bail!("REDIS_URL is empty"),
        1 => Ok(urls),
        _ if settings.redis_cluster => Ok(urls),
        _ => bail!(
            "REDIS_URL lists several nodes; set METACAST_REDIS_CLUSTER=true to use them as Redis Cluster seeds"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, cluster: bool) -> Settings {
        let cluster = cluster.to_string();
        Settings::from_lookup(|name| match name {
            "REDIS_URL" => Some(url.to_owned()),
            "METACAST_REDIS_CLUSTER" => Some(cluster.clone()),
            _ => None,
        })
        .expect("valid settings")
    }

    #[test]
    fn several_urls_need_cluster_mode() {
        let urls = "redis://127.0.0.1:7000, redis://127.0.0.1:7001";
        let err = connect(&settings(urls, false)).err().expect("refused");
        assert!(err.to_string().contains("METACAST_REDIS_CLUSTER"), "{err}");
        assert!(matches!(
            connect(&settings(urls, true)),
            Ok(Redis::Cluster(_))
        ));
        let clients = subscription_clients(&settings(urls, true)).expect("clients");
        assert_eq!(clients.len(), 2, "one per seed node");
    }

    // The lazy ConnectionManager spawns its reconnect task on the runtime.
    #[tokio::test]
    async fn one_url_is_one_server_unless_told() {
        let url = "redis://127.0.0.1:6379";
        assert!(matches!(
            connect(&settings(url, false)),
            Ok(Redis::Single(_))
        ));
        assert!(matches!(
            connect(&settings(url, true)),
            Ok(Redis::Cluster(_))
        ));
    }

    #[test]
    fn bad_seed_urls_name_the_variable() {
        let err = connect(&settings("redis://127.0.0.1:7000,nonsense", true))
            .err()
            .expect("refused");
        assert!(format!("{err:#}").contains("REDIS_URL"), "{err:#}");
        let err = connect(&settings(" , ", true)).err().expect("refused");
        assert!(err.to_string().contains("REDIS_URL"), "{err}");
    }
}
