//! The permission matrix (SPEC §6): every endpoint × every role, with the
//! expected status computed from two tables — what each endpoint demands
//! and what each role's token grants — by one small function, not written
//! down by hand per case.
//!
//! The oracle deliberately re-implements pattern matching in a few lines
//! rather than calling metacast's own matcher, so a matcher bug cannot
//! agree with itself.

use axum::http::{Method, StatusCode};
use metacast::auth::MetacastClaim;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{TestApp, TestResponse};

/// What an endpoint demands of the caller.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Any valid token (the answer is scoped to what the caller may see).
    AnyToken,
    /// An action on the room in the path; 403 otherwise, before any lookup.
    Room(&'static str),
    /// The connection in the path, acted on under a connection rule.
    Connection(ConnectionRule),
    /// `join` on the room, and owning the connection.
    Join,
    /// A session by id: `read` on its room, else it is invisible (404).
    SessionById,
}

/// Who may act on a connection (SPEC §6).
#[derive(Debug, Clone, Copy)]
enum ConnectionRule {
    /// See it: the owner, or `read` on a room it is in.
    View,
    /// Heartbeat, disconnect, stream it: the owner.
    Manage,
    /// Write its metadata: the owner with `own_metadata`, or `moderate` on a room it is in.
    WriteMetadata,
    /// Take it out of the room in the path: the owner, or `moderate` on that room.
    Leave,
}

struct Endpoint {
    method: Method,
    /// `{room}`, `{conn}` and `{session}` are filled from the fixture.
    path: &'static str,
    /// `(content type, body)`.
    body: Option<(&'static str, &'static str)>,
    rule: Rule,
    /// The status of an allowed call on the fixture.
    success: StatusCode,
    /// An allowed call changes the fixture so later rows need a fresh one.
    destructive: bool,
}

const fn endpoint(method: Method, path: &'static str, rule: Rule, success: StatusCode) -> Endpoint {
    Endpoint {
        method,
        path,
        body: None,
        rule,
        success,
        destructive: false,
    }
}

impl Endpoint {
    const fn with_body(mut self, content_type: &'static str, body: &'static str) -> Self {
        self.body = Some((content_type, body));
        self
    }

    const fn destructive(mut self) -> Self {
        self.destructive = true;
        self
    }
}

const JSON: &str = "application/json";
const MERGE_PATCH: &str = "application/merge-patch+json";

/// Every `/v1` endpoint (SPEC §2).
fn endpoints() -> Vec<Endpoint> {
    use ConnectionRule::*;
    use Rule::*;
    vec![
        endpoint(Method::GET, "/v1/rooms", AnyToken, StatusCode::OK),
        endpoint(
            Method::GET,
            "/v1/rooms/{room}",
            Room("read"),
            StatusCode::OK,
        ),
        endpoint(
            Method::GET,
            "/v1/rooms/{room}/metadata",
            Room("read"),
            StatusCode::OK,
        ),
        endpoint(
            Method::PUT,
            "/v1/rooms/{room}/metadata",
            Room("write_room"),
            StatusCode::OK,
        )
        .with_body(JSON, r#"{"topic":"put"}"#),
        endpoint(
            Method::PATCH,
            "/v1/rooms/{room}/metadata",
            Room("write_room"),
            StatusCode::OK,
        )
        .with_body(MERGE_PATCH, r#"{"topic":"patched"}"#),
        endpoint(
            Method::DELETE,
            "/v1/rooms/{room}/metadata",
            Room("write_room"),
            StatusCode::NO_CONTENT,
        ),
        endpoint(
            Method::GET,
            "/v1/rooms/{room}/session",
            Room("read"),
            StatusCode::OK,
        ),
        endpoint(
            Method::GET,
            "/v1/rooms/{room}/session/metadata",
            Room("read"),
            StatusCode::OK,
        ),
        endpoint(
            Method::PUT,
            "/v1/rooms/{room}/session/metadata",
            Room("write_session"),
            StatusCode::OK,
        )
        .with_body(JSON, r#"{"rec":true}"#),
        endpoint(
            Method::PATCH,
            "/v1/rooms/{room}/session/metadata",
            Room("write_session"),
            StatusCode::OK,
        )
        .with_body(JSON, r#"{"rec":false}"#),
        endpoint(
            Method::DELETE,
            "/v1/rooms/{room}/session/metadata",
            Room("write_session"),
            StatusCode::NO_CONTENT,
        ),
        endpoint(
            Method::GET,
            "/v1/rooms/{room}/sessions",
            Room("read"),
            StatusCode::OK,
        ),
        endpoint(
            Method::GET,
            "/v1/sessions/{session}",
            SessionById,
            StatusCode::OK,
        ),
        endpoint(
            Method::GET,
            "/v1/rooms/{room}/connections",
            Room("read"),
            StatusCode::OK,
        ),
        // The fixture's connection is already in the room: 200, not 201.
        endpoint(
            Method::PUT,
            "/v1/rooms/{room}/connections/{conn}",
            Join,
            StatusCode::OK,
        ),
        endpoint(
            Method::GET,
            "/v1/rooms/{room}/events",
            Room("read"),
            StatusCode::OK,
        ),
        endpoint(
            Method::POST,
            "/v1/stream-tickets",
            AnyToken,
            StatusCode::CREATED,
        ),
        endpoint(Method::GET, "/v1/connections", AnyToken, StatusCode::OK),
        endpoint(
            Method::POST,
            "/v1/connections",
            AnyToken,
            StatusCode::CREATED,
        ),
        endpoint(
            Method::GET,
            "/v1/connections/{conn}",
            Connection(View),
            StatusCode::OK,
        ),
        endpoint(
            Method::GET,
            "/v1/connections/{conn}/metadata",
            Connection(View),
            StatusCode::OK,
        ),
        endpoint(
            Method::PUT,
            "/v1/connections/{conn}/metadata",
            Connection(WriteMetadata),
            StatusCode::OK,
        )
        .with_body(JSON, r#"{"name":"put"}"#),
        endpoint(
            Method::PATCH,
            "/v1/connections/{conn}/metadata",
            Connection(WriteMetadata),
            StatusCode::OK,
        )
        .with_body(MERGE_PATCH, r#"{"muted":true}"#),
        endpoint(
            Method::POST,
            "/v1/connections/{conn}/heartbeat",
            Connection(Manage),
            StatusCode::NO_CONTENT,
        ),
        endpoint(
            Method::GET,
            "/v1/connections/{conn}/events",
            Connection(Manage),
            StatusCode::OK,
        ),
        // The destructive ones: each success needs a fresh fixture.
        endpoint(
            Method::DELETE,
            "/v1/rooms/{room}/connections/{conn}",
            Connection(Leave),
            StatusCode::NO_CONTENT,
        )
        .destructive(),
        endpoint(
            Method::POST,
            "/v1/rooms/{room}/clear",
            Room("moderate"),
            StatusCode::NO_CONTENT,
        )
        .destructive(),
        endpoint(
            Method::DELETE,
            "/v1/connections/{conn}",
            Connection(Manage),
            StatusCode::NO_CONTENT,
        )
        .destructive(),
        endpoint(
            Method::DELETE,
            "/v1/rooms/{room}",
            Room("delete"),
            StatusCode::NO_CONTENT,
        )
        .destructive(),
    ]
}

/// The subject owning the fixture's connection.
pub(crate) const OWNER: &str = "owner";
const ALL_ACTIONS: &[&str] = &[
    "read",
    "join",
    "write_session",
    "write_room",
    "moderate",
    "delete",
];

/// A caller: no token, or a token's claims. `{room}` in a pattern is the
/// fixture's room.
pub(crate) struct Role {
    pub name: &'static str,
    pub token: Option<RoleClaims>,
}

pub(crate) struct RoleClaims {
    pub sub: &'static str,
    pub admin: bool,
    pub own_metadata: bool,
    pub grants: Vec<(&'static str, &'static [&'static str])>,
}

fn role(
    name: &'static str,
    sub: &'static str,
    grants: Vec<(&'static str, &'static [&'static str])>,
) -> Role {
    Role {
        name,
        token: Some(RoleClaims {
            sub,
            admin: false,
            own_metadata: false,
            grants,
        }),
    }
}

pub(crate) fn roles() -> Vec<Role> {
    let mut admin = role("admin", "root", vec![]);
    if let Some(claims) = admin.token.as_mut() {
        claims.admin = true;
    }
    let mut own_metadata = role("owner with own_metadata", OWNER, vec![]);
    if let Some(claims) = own_metadata.token.as_mut() {
        claims.own_metadata = true;
    }
    vec![
        Role {
            name: "no token",
            token: None,
        },
        admin,
        role("reader", "someone", vec![("{room}", &["read"])]),
        role("joiner", "someone", vec![("{room}", &["join"])]),
        role(
            "reader and joiner",
            "someone",
            vec![("{room}", &["read", "join"])],
        ),
        role(
            "session writer",
            "someone",
            vec![("{room}", &["write_session"])],
        ),
        role("room writer", "someone", vec![("{room}", &["write_room"])]),
        role("moderator", "someone", vec![("{room}", &["moderate"])]),
        role("deleter", "someone", vec![("{room}", &["delete"])]),
        role(
            "everything via a prefix",
            "someone",
            vec![("{room}*", ALL_ACTIONS)],
        ),
        role(
            "everything on other rooms",
            "someone",
            vec![
                ("{room}x", ALL_ACTIONS),
                ("{room}-*", ALL_ACTIONS),
                ("x{room}", ALL_ACTIONS),
            ],
        ),
        role("no permissions", "someone", vec![]),
        role("owner", OWNER, vec![]),
        own_metadata,
        role(
            "owner and reader",
            OWNER,
            vec![("{room}", &["read", "join"])],
        ),
    ]
}

impl RoleClaims {
    /// The oracle's own pattern matching: exact, or a prefix before `*`.
    pub fn allows(&self, room: &str, action: &str) -> bool {
        self.admin
            || self.grants.iter().any(|(pattern, actions)| {
                let pattern = pattern.replace("{room}", room);
                let covers = match pattern.strip_suffix('*') {
                    Some(prefix) => room.starts_with(prefix),
                    None => pattern == room,
                };
                covers && actions.contains(&action)
            })
    }

    pub fn owns(&self) -> bool {
        self.admin || self.sub == OWNER
    }

    /// The fixture's connection is in the fixture's room only.
    fn sees_connection(&self, room: &str) -> bool {
        self.owns() || self.allows(room, "read")
    }

    fn may(&self, rule: ConnectionRule, room: &str) -> bool {
        match rule {
            ConnectionRule::View => self.sees_connection(room),
            ConnectionRule::Manage => self.owns(),
            ConnectionRule::WriteMetadata => {
                self.admin
                    || (self.sub == OWNER && self.own_metadata)
                    || self.allows(room, "moderate")
            }
            ConnectionRule::Leave => self.owns() || self.allows(room, "moderate"),
        }
    }
}

/// The status SPEC §6 implies for `role` calling `endpoint` on the fixture:
/// 401 without a valid token; 403 when a room action is missing (decided
/// from the token alone); for connections and sessions, 404 when the caller
/// may not see them and 403 when it sees but may not act.
fn expected(endpoint: &Endpoint, role: &Role, room: &str) -> StatusCode {
    let Some(claims) = &role.token else {
        return StatusCode::UNAUTHORIZED;
    };
    let connection = |rule| {
        if claims.may(rule, room) {
            endpoint.success
        } else if claims.sees_connection(room) {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::NOT_FOUND
        }
    };
    match endpoint.rule {
        Rule::AnyToken => endpoint.success,
        Rule::Room(action) if claims.allows(room, action) => endpoint.success,
        Rule::Room(_) => StatusCode::FORBIDDEN,
        Rule::SessionById if claims.allows(room, "read") => endpoint.success,
        Rule::SessionById => StatusCode::NOT_FOUND,
        Rule::Join if !claims.allows(room, "join") => StatusCode::FORBIDDEN,
        Rule::Join => connection(ConnectionRule::Manage),
        Rule::Connection(rule) => connection(rule),
    }
}

/// A room with metadata and an active session, and a connection of
/// [`OWNER`] in it.
struct Fixture {
    room: String,
    connection: String,
    session: String,
}

async fn fixture(app: &TestApp, generation: usize) -> Fixture {
    let room = format!("matrix{generation}");
    app.create_room(&room, json!({ "topic": "matrix" })).await;
    let owner = app.token_for(OWNER, &[]);
    let connection = app.connect(&owner).await;
    let joined = app.join(&app.admin(), &room, &connection).await;
    assert_eq!(joined.status, StatusCode::CREATED, "{joined:?}");
    let session = joined.json()["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    Fixture {
        room,
        connection,
        session,
    }
}

pub(crate) fn token(app: &TestApp, claims: &RoleClaims, room: &str) -> String {
    app.token(
        claims.sub,
        MetacastClaim {
            admin: claims.admin,
            own_metadata: claims.own_metadata,
            rooms: claims
                .grants
                .iter()
                .map(|(pattern, actions)| {
                    (
                        pattern.replace("{room}", room),
                        actions.iter().map(|a| (*a).to_owned()).collect(),
                    )
                })
                .collect(),
        },
    )
}

async fn call(app: &TestApp, endpoint: &Endpoint, role: &Role, fixture: &Fixture) -> TestResponse {
    let uri = endpoint
        .path
        .replace("{room}", &fixture.room)
        .replace("{conn}", &fixture.connection)
        .replace("{session}", &fixture.session);
    let mut request = app.request(endpoint.method.clone(), &uri);
    if let Some(claims) = &role.token {
        request = request.bearer(&token(app, claims, &fixture.room));
    }
    if let Some((content_type, body)) = endpoint.body {
        request = request.body(content_type, body);
    }
    request.send().await
}

#[sqlx::test]
async fn every_endpoint_answers_every_role_as_the_permission_table_implies(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut generation = 0;
    let mut current = fixture(&app, generation).await;
    let mut mismatches = Vec::new();
    let mut one_sided = Vec::new();
    let mut checked = 0;
    for endpoint in endpoints() {
        let (mut allowed, mut refused) = (false, false);
        for role in roles() {
            let want = expected(&endpoint, &role, &current.room);
            let response = call(&app, &endpoint, &role, &current).await;
            checked += 1;
            if role.token.as_ref().is_some_and(|claims| !claims.admin) {
                allowed |= response.status.is_success();
                refused |= !response.status.is_success();
            }
            if response.status != want {
                mismatches.push(format!(
                    "{} {} as {}: expected {want}, got {response:?}",
                    endpoint.method, endpoint.path, role.name
                ));
            } else if !want.is_success() {
                let code = match want {
                    StatusCode::UNAUTHORIZED => "invalid-token",
                    StatusCode::FORBIDDEN => "forbidden",
                    _ => "",
                };
                let body = response.json();
                if !code.is_empty() && body["code"] != code {
                    mismatches.push(format!(
                        "{} {} as {}: expected code {code}, got {response:?}",
                        endpoint.method, endpoint.path, role.name
                    ));
                }
            }
            if endpoint.destructive && response.status.is_success() {
                generation += 1;
                current = fixture(&app, generation).await;
            }
        }
        // Each rule must be seen from both sides by non-admin tokens, or the
        // role table has a gap (any valid token may call AnyToken endpoints).
        if !allowed || (!refused && !matches!(endpoint.rule, Rule::AnyToken)) {
            one_sided.push(format!("{} {}", endpoint.method, endpoint.path));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {checked} calls disagree with the permission table:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(
        one_sided.is_empty(),
        "no non-admin role both passes and fails these: {one_sided:?}"
    );
}

/// The oracle itself: a few rows written out, so a bug in `expected` that
/// would make the matrix vacuous (say, always "allowed") fails here.
#[test]
fn the_oracle_agrees_with_hand_written_rows() {
    let endpoints = endpoints();
    let find = |method: Method, path: &str| {
        endpoints
            .iter()
            .find(|e| e.method == method && e.path == path)
            .unwrap()
    };
    let roles = roles();
    let role = |name: &str| roles.iter().find(|r| r.name == name).unwrap();
    let room = "matrix0";
    let cases = [
        (
            Method::GET,
            "/v1/rooms/{room}/metadata",
            "reader",
            StatusCode::OK,
        ),
        (
            Method::PUT,
            "/v1/rooms/{room}/metadata",
            "reader",
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            "/v1/rooms/{room}/metadata",
            "everything on other rooms",
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            "/v1/rooms/{room}/metadata",
            "everything via a prefix",
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/v1/rooms/{room}/metadata",
            "no token",
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            "/v1/connections/{conn}",
            "no permissions",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/connections/{conn}",
            "reader",
            StatusCode::OK,
        ),
        (
            Method::PUT,
            "/v1/connections/{conn}/metadata",
            "reader",
            StatusCode::FORBIDDEN,
        ),
        (
            Method::PUT,
            "/v1/connections/{conn}/metadata",
            "owner",
            StatusCode::FORBIDDEN,
        ),
        (
            Method::PUT,
            "/v1/connections/{conn}/metadata",
            "owner with own_metadata",
            StatusCode::OK,
        ),
        (
            Method::PUT,
            "/v1/connections/{conn}/metadata",
            "moderator",
            StatusCode::OK,
        ),
        (
            Method::PUT,
            "/v1/rooms/{room}/connections/{conn}",
            "joiner",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PUT,
            "/v1/rooms/{room}/connections/{conn}",
            "reader and joiner",
            StatusCode::FORBIDDEN,
        ),
        (
            Method::PUT,
            "/v1/rooms/{room}/connections/{conn}",
            "owner",
            StatusCode::FORBIDDEN,
        ),
        (
            Method::PUT,
            "/v1/rooms/{room}/connections/{conn}",
            "owner and reader",
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/v1/sessions/{session}",
            "room writer",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            "/v1/rooms/{room}/connections/{conn}",
            "moderator",
            StatusCode::NO_CONTENT,
        ),
        (
            Method::DELETE,
            "/v1/rooms/{room}/connections/{conn}",
            "reader",
            StatusCode::FORBIDDEN,
        ),
    ];
    for (method, path, name, want) in cases {
        assert_eq!(
            expected(find(method.clone(), path), role(name), room),
            want,
            "{method} {path} as {name}"
        );
    }
}
