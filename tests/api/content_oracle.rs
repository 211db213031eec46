//! The permission oracle for content (SPEC §6, docs/architecture.md "Permissions"):
//! every path that returns room content — documents, listings, filters,
//! occupants, connections, the join answer, and streams opened by header,
//! ticket and cookie — called by every role, must show a secret only to a
//! role allowed to see it, and must show it to those that are.
//!
//! Secrets of the fixture: the room's metadata, the session's metadata and
//! id (seen with `read` on the room), and the metadata of the connection in
//! it (seen by its owner, or with `read` on the room).

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{TestApp, test_settings};
use crate::permissions::{OWNER, Role, RoleClaims, roles, token};
use crate::sse;

const ROOM: &str = "vault";
const ROOM_SECRET: &str = "room-secret-3f9a";
const SESSION_SECRET: &str = "session-secret-7c2e";
const CONN_SECRET: &str = "conn-secret-b41d";

struct Fixture {
    connection: String,
    session: String,
}

async fn fixture(app: &TestApp) -> Fixture {
    app.create_room(ROOM, json!({ "topic": ROOM_SECRET })).await;
    let owner = app.token_for(OWNER, &[]);
    let connection = app
        .post("/v1/connections")
        .bearer(&owner)
        .json(&json!({ "metadata": { "name": CONN_SECRET } }))
        .send()
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let joined = app.join(&app.admin(), ROOM, &connection).await;
    assert_eq!(joined.status, StatusCode::CREATED, "{joined:?}");
    let written = app
        .put(&format!("/v1/rooms/{ROOM}/session/metadata"))
        .bearer(&app.admin())
        .json(&json!({ "note": SESSION_SECRET }))
        .send()
        .await;
    assert_eq!(written.status, StatusCode::OK, "{written:?}");
    Fixture {
        connection,
        session: joined.json()["session_id"].as_str().unwrap().to_owned(),
    }
}

/// How a path is called.
#[derive(Clone, Copy)]
enum Call {
    Get(&'static str),
    Put(&'static str),
    /// An event stream: its first `sync`, opened with the bearer header, a
    /// ticket or the `metacast_token` cookie.
    Stream(&'static str, Auth),
}

#[derive(Clone, Copy, Debug)]
enum Auth {
    Header,
    Ticket,
    Cookie,
}

fn calls() -> Vec<Call> {
    use Auth::*;
    use Call::*;
    let mut calls = vec![
        Get("/v1/rooms"),
        Get("/v1/rooms?prefix=va"),
        Get("/v1/rooms?where=%24.topic%20%3D%3D%20%22room-secret-3f9a%22"),
        Get("/v1/rooms/{room}"),
        Get("/v1/rooms/{room}/metadata"),
        Get("/v1/rooms/{room}/session"),
        Get("/v1/rooms/{room}/session/metadata"),
        Get("/v1/rooms/{room}/sessions"),
        Get("/v1/sessions/{session}"),
        Get("/v1/rooms/{room}/connections"),
        Get("/v1/connections"),
        Get("/v1/connections?room={room}"),
        Get("/v1/connections/{conn}"),
        Get("/v1/connections/{conn}/metadata"),
        Put("/v1/rooms/{room}/connections/{conn}"),
    ];
    for auth in [Header, Ticket, Cookie] {
        calls.push(Stream("/v1/rooms/{room}/events", auth));
        calls.push(Stream("/v1/connections/{conn}/events", auth));
    }
    calls
}

fn fill(path: &str, fixture: &Fixture) -> String {
    path.replace("{room}", ROOM)
        .replace("{conn}", &fixture.connection)
        .replace("{session}", &fixture.session)
}

/// What the role may see of the fixture.
fn may_see(claims: &RoleClaims, secret: &str) -> bool {
    let reads = claims.allows(ROOM, "read");
    if secret == CONN_SECRET {
        reads || claims.owns()
    } else {
        reads
    }
}

/// The body (for a stream: its first `sync`) and status of one call.
async fn answer(
    app: &TestApp,
    base: &str,
    call: Call,
    token: &str,
    fixture: &Fixture,
) -> (StatusCode, String) {
    match call {
        Call::Get(path) | Call::Put(path) => {
            let method = if matches!(call, Call::Get(_)) {
                Method::GET
            } else {
                Method::PUT
            };
            let response = app
                .request(method, &fill(path, fixture))
                .bearer(token)
                .send()
                .await;
            let body = String::from_utf8_lossy(&response.body).into_owned();
            (response.status, body)
        }
        Call::Stream(path, auth) => {
            let mut url = format!("{base}{}", fill(path, fixture));
            let header;
            let headers: Vec<(&str, &str)> = match auth {
                Auth::Header => {
                    header = format!("Bearer {token}");
                    vec![("authorization", header.as_str())]
                }
                Auth::Cookie => {
                    header = format!("metacast_token={token}");
                    vec![("cookie", header.as_str())]
                }
                Auth::Ticket => {
                    let ticket = app.post("/v1/stream-tickets").bearer(token).send().await;
                    assert_eq!(ticket.status, StatusCode::CREATED, "{ticket:?}");
                    url = format!("{url}?ticket={}", ticket.json()["ticket"].as_str().unwrap());
                    Vec::new()
                }
            };
            let (status, stream) = sse::open(&url, &headers).await;
            let Some(mut stream) = stream else {
                return (status, String::new());
            };
            let sync = tokio::time::timeout(Duration::from_secs(5), stream.expect("sync"))
                .await
                .expect("a sync within 5 s");
            (status, sync.data.to_string())
        }
    }
}

fn describe(call: Call) -> String {
    match call {
        Call::Get(path) => format!("GET {path}"),
        Call::Put(path) => format!("PUT {path}"),
        Call::Stream(path, auth) => format!("stream {path} ({auth:?})"),
    }
}

#[sqlx::test]
async fn no_path_shows_a_role_what_it_may_not_see(pool: PgPool) {
    let mut settings = test_settings();
    // Closing the owner's connection stream must not end the fixture.
    settings.presence.stream_grace = Duration::from_secs(3600);
    let app = TestApp::with_settings(pool, settings).await;
    let base = app.listen().await;
    let fixture = fixture(&app).await;
    let mut leaks = Vec::new();
    let mut unseen = Vec::new();
    let mut checked = 0;
    for role in roles() {
        let Role {
            name,
            token: Some(claims),
        } = role
        else {
            continue;
        };
        let token = token(&app, &claims, ROOM);
        let mut shown = String::new();
        for call in calls() {
            let (status, body) = answer(&app, &base, call, &token, &fixture).await;
            checked += 1;
            assert!(
                !status.is_server_error(),
                "{} as {name}: {status} {body}",
                describe(call)
            );
            for secret in [ROOM_SECRET, SESSION_SECRET, CONN_SECRET] {
                if body.contains(secret) && !may_see(&claims, secret) {
                    leaks.push(format!(
                        "{} as {name} shows {secret}: {body}",
                        describe(call)
                    ));
                }
            }
            // The session id is in the URL of sessions/{id}; elsewhere it
            // is content of the room.
            let names_session = matches!(call, Call::Get(path) if path.contains("{session}"));
            if !names_session && body.contains(&fixture.session) && !claims.allows(ROOM, "read") {
                leaks.push(format!(
                    "{} as {name} shows the session id: {body}",
                    describe(call)
                ));
            }
            shown.push_str(&body);
        }
        for secret in [ROOM_SECRET, SESSION_SECRET, CONN_SECRET] {
            if may_see(&claims, secret) && !shown.contains(secret) {
                unseen.push(format!("{name} is never shown {secret}"));
            }
        }
    }
    assert!(checked > 200, "only {checked} calls");
    assert!(
        leaks.is_empty(),
        "{} leaks:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    assert!(unseen.is_empty(), "{unseen:?}");
}

/// The oracle's rule, written out: so a `may_see` that always said no (and
/// made the test above vacuous) fails here.
#[test]
fn the_content_rule_agrees_with_hand_written_rows() {
    let roles = roles();
    let claims = |name: &str| {
        roles
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.token.as_ref())
            .unwrap()
    };
    for (name, secret, want) in [
        ("reader", ROOM_SECRET, true),
        ("reader", CONN_SECRET, true),
        ("joiner", ROOM_SECRET, false),
        ("joiner", SESSION_SECRET, false),
        ("owner", CONN_SECRET, true),
        ("owner", ROOM_SECRET, false),
        ("everything on other rooms", ROOM_SECRET, false),
        ("everything via a prefix", SESSION_SECRET, true),
        ("admin", ROOM_SECRET, true),
    ] {
        assert_eq!(may_see(claims(name), secret), want, "{name} {secret}");
    }
}
