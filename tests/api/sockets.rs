//! The connections to Redis and Postgres send each request at once: with
//! Nagle's algorithm left on, a request written while an earlier one is
//! unacknowledged, or the tail of one larger than a segment, waits for the
//! server's ACK, which the server may delay by 40 ms when it has nothing to
//! answer yet. Neither client library sets `TCP_NODELAY` by default in
//! every version (sqlx 0.9.0 did not), so this checks the sockets.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
use sqlx::PgPool;

use crate::helpers::TestApp;

#[sqlx::test]
async fn redis_and_postgres_connections_disable_nagle(pool: PgPool) {
    let app = TestApp::new(pool).await;
    // Each server names both ends of the connection it was asked on.
    let client: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query_async(&mut app.state.redis.clone())
        .await
        .unwrap();
    let end = |name: &str| {
        client
            .split(' ')
            .find_map(|field| field.strip_prefix(name))
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no {name} in CLIENT INFO: {client}"))
    };
    let to_redis = (end("addr="), end("laddr="));
    let (local, peer): (String, String) = sqlx::query_as(
        "select host(inet_client_addr()) || ':' || inet_client_port(),
                host(inet_server_addr()) || ':' || inet_server_port()",
    )
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    let to_postgres = (local.parse().unwrap(), peer.parse().unwrap());

    for (server, ends) in [("Redis", to_redis), ("Postgres", to_postgres)] {
        let socket = own_socket(ends)
            .unwrap_or_else(|| panic!("no socket of this process from {} to {}", ends.0, ends.1));
        assert!(
            rustix::net::sockopt::tcp_nodelay(&socket).unwrap(),
            "the connection to {server} leaves Nagle's algorithm on"
        );
    }
}

/// A duplicate of this process' socket from `local` to `peer`: the same
/// local port can serve connections to different servers.
fn own_socket((local, peer): (SocketAddr, SocketAddr)) -> Option<OwnedFd> {
    let process = pidfd_open(getpid(), PidfdFlags::empty()).unwrap();
    let inet = |addr: rustix::net::SocketAddrAny| SocketAddr::try_from(addr).ok();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(|fd| pidfd_getfd(&process, fd, PidfdGetfdFlags::empty()).ok())
        .find(|socket| {
            let ends = rustix::net::getsockname(socket).ok().and_then(inet).zip(
                rustix::net::getpeername(socket)
                    .ok()
                    .flatten()
                    .and_then(inet),
            );
            ends == Some((local, peer))
        })
}
