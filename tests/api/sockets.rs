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
    // Each server names the client end of the connection it was asked on.
    let client: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query_async(&mut app.state.redis.clone())
        .await
        .unwrap();
    let redis_port = client
        .split(' ')
        .find_map(|field| field.strip_prefix("addr="))
        .and_then(|addr| addr.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no addr in CLIENT INFO: {client}"))
        .port();
    let postgres_port: i32 = sqlx::query_scalar("select inet_client_port()")
        .fetch_one(&app.state.db)
        .await
        .unwrap();

    for (server, port) in [("Redis", redis_port), ("Postgres", postgres_port as u16)] {
        let socket = own_socket_bound_to(port)
            .unwrap_or_else(|| panic!("no socket of this process on local port {port}"));
        assert!(
            rustix::net::sockopt::tcp_nodelay(&socket).unwrap(),
            "the connection to {server} leaves Nagle's algorithm on"
        );
    }
}

/// A duplicate of this process' socket whose local port is `port`.
fn own_socket_bound_to(port: u16) -> Option<OwnedFd> {
    let process = pidfd_open(getpid(), PidfdFlags::empty()).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(|fd| pidfd_getfd(&process, fd, PidfdGetfdFlags::empty()).ok())
        .find(|socket| {
            rustix::net::getsockname(socket)
                .ok()
                .and_then(|addr| SocketAddr::try_from(addr).ok())
                .is_some_and(|addr| addr.port() == port)
        })
}
