//! Hostile request bodies (issue #6): every write endpoint × every bad body
//! gets a 4xx problem with the expected `code`, and nothing changes — not
//! the document, not its version, and no room or connection appears.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestApp, TestResponse};

const JSON: &str = "application/json";
const MERGE_PATCH: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

/// Which kind of body a write endpoint parses, so a row can skip targets
/// for which its bytes would be a valid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A whole document (PUT) or a merge object.
    Document,
    /// An RFC 6902 operation list.
    JsonPatch,
    /// `POST /v1/connections`: `{metadata?, ttl_seconds?}`.
    NewConnection,
}

/// A write endpoint under attack.
struct Target {
    name: &'static str,
    method: &'static str,
    /// `{room}` and `{conn}` are filled from the fixture.
    path: &'static str,
    content_type: &'static str,
    kind: Kind,
}

const fn target(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: &'static str,
    kind: Kind,
) -> Target {
    Target {
        name,
        method,
        path,
        content_type,
        kind,
    }
}

const TARGETS: &[Target] = &[
    target(
        "room PUT",
        "PUT",
        "/v1/rooms/{room}/metadata",
        JSON,
        Kind::Document,
    ),
    target(
        "room create",
        "PUT",
        "/v1/rooms/fresh/metadata",
        JSON,
        Kind::Document,
    ),
    target(
        "room PATCH merge",
        "PATCH",
        "/v1/rooms/{room}/metadata",
        JSON,
        Kind::Document,
    ),
    target(
        "room PATCH deepMerge",
        "PATCH",
        "/v1/rooms/{room}/metadata?strategy=deepMerge",
        JSON,
        Kind::Document,
    ),
    target(
        "room PATCH merge-patch",
        "PATCH",
        "/v1/rooms/{room}/metadata",
        MERGE_PATCH,
        Kind::Document,
    ),
    target(
        "room PATCH json-patch",
        "PATCH",
        "/v1/rooms/{room}/metadata",
        JSON_PATCH,
        Kind::JsonPatch,
    ),
    target(
        "session PUT",
        "PUT",
        "/v1/rooms/{room}/session/metadata",
        JSON,
        Kind::Document,
    ),
    target(
        "session PATCH merge-patch",
        "PATCH",
        "/v1/rooms/{room}/session/metadata",
        MERGE_PATCH,
        Kind::Document,
    ),
    target(
        "session PATCH json-patch",
        "PATCH",
        "/v1/rooms/{room}/session/metadata",
        JSON_PATCH,
        Kind::JsonPatch,
    ),
    target(
        "connection PUT",
        "PUT",
        "/v1/connections/{conn}/metadata",
        JSON,
        Kind::Document,
    ),
    target(
        "connection PATCH deepMerge",
        "PATCH",
        "/v1/connections/{conn}/metadata?strategy=deepMerge",
        JSON,
        Kind::Document,
    ),
    target(
        "connection PATCH json-patch",
        "PATCH",
        "/v1/connections/{conn}/metadata",
        JSON_PATCH,
        Kind::JsonPatch,
    ),
    target(
        "connection create",
        "POST",
        "/v1/connections",
        JSON,
        Kind::NewConnection,
    ),
];

/// A bad body: its bytes for each kind of endpoint (`None`: not applicable),
/// an optional `Content-Type` overriding the target's, and the answer.
struct BadBody {
    name: &'static str,
    bytes: fn(Kind) -> Option<Vec<u8>>,
    content_type: Option<&'static str>,
    status: StatusCode,
    code: &'static str,
}

/// The same bytes for every kind of endpoint.
fn any(bytes: &[u8]) -> Option<Vec<u8>> {
    Some(bytes.to_vec())
}

/// `value` as the document, as a json-patch `add` of it, or as new
/// connection's metadata.
fn wrapped(kind: Kind, value: &str) -> Option<Vec<u8>> {
    Some(
        match kind {
            Kind::Document => value.to_owned(),
            Kind::JsonPatch => format!(r#"[{{"op":"add","path":"/x","value":{value}}}]"#),
            Kind::NewConnection => format!(r#"{{"metadata":{value}}}"#),
        }
        .into_bytes(),
    )
}

fn nested(levels: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels))
}

fn bad(
    name: &'static str,
    bytes: fn(Kind) -> Option<Vec<u8>>,
    status: StatusCode,
    code: &'static str,
) -> BadBody {
    BadBody {
        name,
        bytes,
        content_type: None,
        status,
        code,
    }
}

fn bad_bodies() -> Vec<BadBody> {
    vec![
        bad(
            "empty",
            |kind| (kind != Kind::NewConnection).then(Vec::new),
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        bad(
            "truncated",
            |_| any(br#"{"a":"#),
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        bad(
            "trailing garbage",
            |_| any(br#"{"a":1} x"#),
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        bad(
            "byte-order mark",
            |_| any(b"\xEF\xBB\xBF{}"),
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        bad(
            "invalid UTF-8 in a string",
            |k| {
                Some(match k {
                    Kind::Document => b"{\"a\":\"\xff\xfe\"}".to_vec(),
                    Kind::JsonPatch => {
                        b"[{\"op\":\"add\",\"path\":\"/x\",\"value\":\"\xc3\x28\"}]".to_vec()
                    }
                    // A UTF-8-encoded surrogate (CESU-8), which UTF-8 forbids.
                    Kind::NewConnection => b"{\"metadata\":{\"a\":\"\xed\xa0\x80\"}}".to_vec(),
                })
            },
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        bad(
            "duplicate keys",
            |k| wrapped(k, r#"{"a":1,"a":2}"#),
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        bad(
            "nested duplicate keys",
            |k| wrapped(k, r#"{"a":{"b":1,"c":0,"b":2}}"#),
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        bad(
            "duplicate keys in the envelope",
            |k| {
                (k == Kind::NewConnection)
                    .then(|| br#"{"ttl_seconds":60,"ttl_seconds":61}"#.to_vec())
            },
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        bad(
            "1e400",
            |k| wrapped(k, r#"{"a":1e400}"#),
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        bad(
            "lone high surrogate",
            |k| wrapped(k, r#"{"a":"\ud800"}"#),
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        bad(
            "lone low surrogate",
            |k| wrapped(k, r#"{"a":"x\udc00y"}"#),
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        bad(
            "NUL in a string",
            |k| wrapped(k, r#"{"a":"\u0000"}"#),
            StatusCode::BAD_REQUEST,
            "invalid-document",
        ),
        bad(
            "NUL in a key",
            |k| wrapped(k, r#"{"a\u0000":1}"#),
            StatusCode::BAD_REQUEST,
            "invalid-document",
        ),
        // Values that never reach the document still reach the change
        // event (`patch` as sent), which Postgres stores as jsonb.
        bad(
            "NUL in a removed key",
            |k| {
                match k {
            Kind::Document => any(br#"{"gone\u0000":null}"#),
            Kind::JsonPatch => any(
                br#"[{"op":"add","path":"/n\u0000","value":1},{"op":"remove","path":"/n\u0000"}]"#,
            ),
            Kind::NewConnection => None,
        }
            },
            StatusCode::BAD_REQUEST,
            "invalid-document",
        ),
        bad(
            "33 levels deep",
            |k| wrapped(k, &nested(33)),
            StatusCode::BAD_REQUEST,
            "document-too-deep",
        ),
        bad(
            "10 000 levels deep",
            |k| wrapped(k, &nested(10_000)),
            StatusCode::BAD_REQUEST,
            "document-too-deep",
        ),
        bad(
            "10 000 brackets",
            |_| any(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).as_bytes()),
            StatusCode::BAD_REQUEST,
            "document-too-deep",
        ),
        bad(
            "over 1 MiB",
            |k| wrapped(k, &format!(r#"{{"a":"{}"}}"#, "x".repeat(1024 * 1024))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
        ),
        bad(
            "document over 64 KiB",
            |k| wrapped(k, &format!(r#"{{"a":"{}"}}"#, "x".repeat(65 * 1024))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "document-too-large",
        ),
        bad(
            "an array, not an object",
            |k| match k {
                Kind::JsonPatch => None,
                _ => wrapped(k, "[1,2]"),
            },
            StatusCode::BAD_REQUEST,
            "*",
        ),
        bad(
            "the envelope as an array",
            |k| (k == Kind::NewConnection).then(|| b"[null,null]".to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid-body",
        ),
        bad(
            "the envelope as a string",
            |k| (k == Kind::NewConnection).then(|| br#""metadata""#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid-body",
        ),
        bad(
            "a string, not a patch",
            |k| (k == Kind::JsonPatch).then(|| br#""remove""#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid-patch",
        ),
        bad(
            "an unknown patch op",
            |k| (k == Kind::JsonPatch).then(|| br#"[{"op":"explode","path":"/a"}]"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid-patch",
        ),
        BadBody {
            name: "text/plain",
            bytes: |_| any(b"{}"),
            content_type: Some("text/plain"),
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported-media-type",
        },
        BadBody {
            name: "form-encoded",
            bytes: |_| any(b"a=1"),
            content_type: Some("application/x-www-form-urlencoded"),
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported-media-type",
        },
    ]
}

struct Fixture {
    room: String,
    connection: String,
}

/// Everything a bad write could have changed.
async fn snapshot(app: &TestApp, fixture: &Fixture) -> Value {
    let admin = app.admin();
    let mut state = Vec::new();
    for uri in [
        format!("/v1/rooms/{}/metadata", fixture.room),
        format!("/v1/rooms/{}/session/metadata", fixture.room),
        format!("/v1/connections/{}/metadata", fixture.connection),
    ] {
        let response = app.get(&uri).bearer(&admin).send().await;
        assert_eq!(response.status, StatusCode::OK, "{uri}: {response:?}");
        state.push(json!({ "uri": uri, "version": response.version(), "doc": response.json() }));
    }
    let rooms = app.get("/v1/rooms").bearer(&admin).send().await;
    state.push(rooms.json()["items"].clone());
    let connections = app.get("/v1/connections").bearer(&admin).send().await;
    let ids: Vec<Value> = connections.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    state.push(Value::Array(ids));
    state.push(Value::from(app.events(&fixture.room).await.len()));
    state.push(json!(
        app.get("/v1/rooms/fresh/metadata")
            .bearer(&admin)
            .send()
            .await
            .status
            .as_u16()
    ));
    state.into_iter().collect::<Vec<_>>().into()
}

#[track_caller]
fn check(response: &TestResponse, bad: &BadBody, case: &str) -> Option<String> {
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let code_ok = bad.code == "*" || body["code"] == bad.code;
    let problem = response.header("content-type") == Some("application/problem+json");
    (response.status != bad.status || !code_ok || !problem).then(|| {
        format!(
            "{case}: expected {} {}, got {} {}",
            bad.status,
            bad.code,
            response.status,
            String::from_utf8_lossy(&response.body[..response.body.len().min(300)])
        )
    })
}

#[sqlx::test]
async fn bad_bodies_are_refused_and_change_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    app.create_room("lobby", json!({ "keep": 1 })).await;
    let connection = app.connect(&admin).await;
    let response = app
        .put(&format!("/v1/connections/{connection}/metadata"))
        .bearer(&admin)
        .json(&json!({ "keep": 1 }))
        .send()
        .await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    assert_eq!(
        app.join(&admin, "lobby", &connection).await.status,
        StatusCode::CREATED
    );
    let fixture = Fixture {
        room: "lobby".to_owned(),
        connection,
    };
    let before = snapshot(&app, &fixture).await;

    let mut failures = Vec::new();
    let mut sent = 0;
    for bad in bad_bodies() {
        for target in TARGETS {
            let Some(bytes) = (bad.bytes)(target.kind) else {
                continue;
            };
            let uri = target
                .path
                .replace("{room}", &fixture.room)
                .replace("{conn}", &fixture.connection);
            let method = target.method.parse().unwrap();
            let response = app
                .request(method, &uri)
                .bearer(&admin)
                .body(bad.content_type.unwrap_or(target.content_type), bytes)
                .send()
                .await;
            sent += 1;
            let case = format!("{} with {}", target.name, bad.name);
            assert!(!response.status.is_server_error(), "{case}: {response:?}");
            failures.extend(check(&response, &bad, &case));
        }
    }
    assert!(sent > 200, "only {sent} requests were sent");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        snapshot(&app, &fixture).await,
        before,
        "a refused write changed something"
    );

    // The control: the same endpoints accept a good body, so the rows above
    // were refused for their bodies and not for something else.
    for target in TARGETS {
        let bytes = wrapped(target.kind, r#"{"fine":true}"#).unwrap();
        let uri = target
            .path
            .replace("{room}", &fixture.room)
            .replace("{conn}", &fixture.connection);
        let response = app
            .request(target.method.parse().unwrap(), &uri)
            .bearer(&admin)
            .body(target.content_type, bytes)
            .send()
            .await;
        assert!(
            response.status.is_success(),
            "{} with a good body: {response:?}",
            target.name
        );
    }
}

/// Numbers at the edges of f64 and of 64-bit integers come back as stored.
/// Postgres prints a jsonb number in full (1.79e308 as 309 digits), and
/// serde_json's default float parser, which is not correctly rounded,
/// overflowed on some of them when reading the document back: a 500.
#[sqlx::test]
async fn extreme_numbers_survive_a_round_trip(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();
    let doc = json!({
        "max": f64::MAX,
        "nearly_min": -1.7976931348623155e308,
        "min_positive": f64::MIN_POSITIVE,
        "subnormal": 5e-324,
        "small": 2.9132314839098117e-261,
        "u64": u64::MAX,
        "i64": i64::MIN,
        "nested": [[-1.7976931348623155e308], { "x": 1.0e300 }],
    });
    let connection = app.connect(&admin).await;
    assert_eq!(
        app.join(&admin, "lobby", &connection).await.status,
        StatusCode::CREATED
    );
    for uri in [
        "/v1/rooms/lobby/metadata".to_owned(),
        "/v1/rooms/lobby/session/metadata".to_owned(),
        format!("/v1/connections/{connection}/metadata"),
    ] {
        let put = app.put(&uri).bearer(&admin).json(&doc).send().await;
        assert_eq!(put.status, StatusCode::OK, "PUT {uri}: {put:?}");
        assert_eq!(put.json(), doc, "PUT {uri}");
        let patched = app
            .patch(&uri)
            .bearer(&admin)
            .json(&json!({ "more": -1.7976931348623155e308 }))
            .send()
            .await;
        assert_eq!(patched.status, StatusCode::OK, "PATCH {uri}: {patched:?}");
        let got = app.get(&uri).bearer(&admin).send().await;
        assert_eq!(got.status, StatusCode::OK, "GET {uri}: {got:?}");
        let mut expected = doc.clone();
        expected["more"] = json!(-1.7976931348623155e308);
        assert_eq!(got.json(), expected, "GET {uri}");
    }
    let room = app.get("/v1/rooms/lobby").bearer(&admin).send().await;
    assert_eq!(room.status, StatusCode::OK, "{room:?}");
}
