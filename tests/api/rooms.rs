//! Room metadata through HTTP: versions, ETags, strategies, preconditions,
//! limits, deletion and listing.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::TestApp;

const LOBBY: &str = "/v1/rooms/lobby/metadata";

#[sqlx::test]
async fn put_creates_then_replaces(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();

    let created = app
        .put(LOBBY)
        .bearer(&token)
        .json(&json!({"topic": "a"}))
        .send()
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.version(), 1);
    assert_eq!(created.header("location"), Some(LOBBY));
    assert_eq!(created.json(), json!({"topic": "a"}));

    let replaced = app
        .put(LOBBY)
        .bearer(&token)
        .json(&json!({"other": 1}))
        .send()
        .await;
    assert_eq!(replaced.status, StatusCode::OK);
    assert_eq!(replaced.version(), 2);
    assert_eq!(replaced.header("location"), None);

    let read = app.get(LOBBY).bearer(&token).send().await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(
        read.json(),
        json!({"other": 1}),
        "PUT replaces the whole document"
    );
    assert_eq!(read.header("etag"), Some("\"2\""));
}

#[sqlx::test]
async fn missing_room_is_404(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    app.get(LOBBY)
        .bearer(&token)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "room-not-found");
    app.get("/v1/rooms/lobby")
        .bearer(&token)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "room-not-found");
    app.patch(LOBBY)
        .bearer(&token)
        .json(&json!({"a": 1}))
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "room-not-found");
    app.delete(LOBBY)
        .bearer(&token)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "room-not-found");
    app.delete("/v1/rooms/lobby")
        .bearer(&token)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "room-not-found");
}

#[sqlx::test]
async fn room_envelope_carries_version_and_timestamps(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("team:42", json!({"n": 1})).await;
    let response = app
        .get("/v1/rooms/team:42")
        .bearer(&app.admin())
        .send()
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.version(), 1);
    let body = response.json();
    assert_eq!(body["id"], "team:42");
    assert_eq!(body["metadata"], json!({"n": 1}));
    assert_eq!(body["version"], 1);
    assert_eq!(body["occupancy"], 0);
    assert_eq!(body["session"], Value::Null);
    assert!(body["created_at"].is_string() && body["updated_at"].is_string());
}

#[sqlx::test]
async fn get_honours_if_none_match(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let version = app.create_room("lobby", json!({"a": 1})).await;
    let token = app.admin();
    for uri in [LOBBY, "/v1/rooms/lobby"] {
        let fresh = app
            .get(uri)
            .bearer(&token)
            .header("if-none-match", &format!("\"{version}\""))
            .send()
            .await;
        assert_eq!(fresh.status, StatusCode::NOT_MODIFIED, "{uri}");
        assert_eq!(fresh.version(), version);
        assert!(fresh.body.is_empty());

        let stale = app
            .get(uri)
            .bearer(&token)
            .header("if-none-match", "\"0\"")
            .send()
            .await;
        assert_eq!(stale.status, StatusCode::OK, "{uri}");
    }
}

#[sqlx::test]
async fn if_match_guards_writes(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    app.create_room("lobby", json!({"a": 1})).await;

    let stale = app
        .put(LOBBY)
        .bearer(&token)
        .if_match(0)
        .json(&json!({"b": 1}))
        .send()
        .await;
    stale.assert_problem(StatusCode::PRECONDITION_FAILED, "version-mismatch");
    let stale = app
        .patch(LOBBY)
        .bearer(&token)
        .if_match(7)
        .json(&json!({"b": 1}))
        .send()
        .await;
    stale.assert_problem(StatusCode::PRECONDITION_FAILED, "version-mismatch");
    app.delete(LOBBY)
        .bearer(&token)
        .if_match(7)
        .send()
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED, "version-mismatch");
    let unchanged = app.get(LOBBY).bearer(&token).send().await;
    assert_eq!(
        (unchanged.version(), unchanged.json()),
        (1, json!({"a": 1})),
        "412 changes nothing"
    );

    let current = app
        .patch(LOBBY)
        .bearer(&token)
        .if_match(1)
        .json(&json!({"b": 1}))
        .send()
        .await;
    assert_eq!(current.status, StatusCode::OK);
    assert_eq!(current.version(), 2);

    let absent = app
        .put("/v1/rooms/nowhere/metadata")
        .bearer(&token)
        .if_match(1)
        .json(&json!({}))
        .send()
        .await;
    absent.assert_problem(StatusCode::PRECONDITION_FAILED, "version-mismatch");
    app.get("/v1/rooms/nowhere/metadata")
        .bearer(&token)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "room-not-found");

    app.put(LOBBY)
        .bearer(&token)
        .header("if-match", "not-an-etag")
        .json(&json!({}))
        .send()
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-precondition");
}

#[sqlx::test]
async fn if_none_match_star_creates_only(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    let create = |body: Value| {
        app.put(LOBBY)
            .bearer(&token)
            .header("if-none-match", "*")
            .json(&body)
            .send()
    };
    assert_eq!(
        create(json!({"first": true})).await.status,
        StatusCode::CREATED
    );
    create(json!({"second": true}))
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED, "already-exists");
    assert_eq!(
        app.get(LOBBY).bearer(&token).send().await.json(),
        json!({"first": true})
    );
}

#[sqlx::test]
async fn patch_strategies_follow_the_content_type(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    app.create_room("lobby", json!({"a": {"x": 1, "y": 2}, "keep": true}))
        .await;
    let patch = |content_type: &str, query: &str, body: Value| {
        app.patch(&format!("{LOBBY}{query}"))
            .bearer(&token)
            .body(content_type, body.to_string())
            .send()
    };

    let merged = patch("application/json", "", json!({"a": {"x": 3}, "n": null})).await;
    assert_eq!(merged.status, StatusCode::OK, "{merged:?}");
    assert_eq!(merged.version(), 2);
    assert_eq!(
        merged.json(),
        json!({"a": {"x": 3}, "keep": true, "n": null})
    );

    let deep = patch(
        "application/json; charset=utf-8",
        "?strategy=deepMerge",
        json!({"a": {"y": 5, "z": null}}),
    )
    .await;
    assert_eq!(deep.version(), 3);
    assert_eq!(
        deep.json(),
        json!({"a": {"x": 3, "y": 5, "z": null}, "keep": true, "n": null})
    );

    let merge_patch = patch(
        "application/merge-patch+json",
        "",
        json!({"a": {"z": null}, "n": null}),
    )
    .await;
    assert_eq!(merge_patch.version(), 4);
    assert_eq!(
        merge_patch.json(),
        json!({"a": {"x": 3, "y": 5}, "keep": true})
    );

    let json_patch = patch(
        "application/json-patch+json",
        "",
        json!([
            {"op": "test", "path": "/keep", "value": true},
            {"op": "remove", "path": "/keep"},
            {"op": "add", "path": "/list", "value": [1]}
        ]),
    )
    .await;
    assert_eq!(json_patch.version(), 5);
    assert_eq!(
        json_patch.json(),
        json!({"a": {"x": 3, "y": 5}, "list": [1]})
    );

    assert_eq!(app.get(LOBBY).bearer(&token).send().await.version(), 5);
}

#[sqlx::test]
async fn failed_json_patch_test_is_409_and_changes_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    app.create_room("lobby", json!({"count": 1})).await;
    let response = app
        .patch(LOBBY)
        .bearer(&token)
        .body(
            "application/json-patch+json",
            json!([
                {"op": "replace", "path": "/count", "value": 5},
                {"op": "test", "path": "/count", "value": 2}
            ])
            .to_string(),
        )
        .send()
        .await;
    response.assert_problem(StatusCode::CONFLICT, "patch-test-failed");

    let missing = app
        .patch(LOBBY)
        .bearer(&token)
        .body(
            "application/json-patch+json",
            r#"[{"op":"remove","path":"/nope"}]"#,
        )
        .send()
        .await;
    missing.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "patch-not-applicable");

    let read = app.get(LOBBY).bearer(&token).send().await;
    assert_eq!((read.version(), read.json()), (1, json!({"count": 1})));
}

#[sqlx::test]
async fn bad_patch_requests_are_rejected(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    app.create_room("lobby", json!({})).await;
    let cases: &[(&str, &str, &str, StatusCode, &str)] = &[
        (
            "text/plain",
            "",
            "{}",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            "application/json",
            "?strategy=sideways",
            "{}",
            StatusCode::BAD_REQUEST,
            "invalid-strategy",
        ),
        (
            "application/merge-patch+json",
            "?strategy=merge",
            "{}",
            StatusCode::BAD_REQUEST,
            "strategy-not-allowed",
        ),
        (
            "application/json-patch+json",
            "?strategy=deepMerge",
            "[]",
            StatusCode::BAD_REQUEST,
            "strategy-not-allowed",
        ),
        (
            "application/json-patch+json",
            "",
            r#"{"op":"add"}"#,
            StatusCode::BAD_REQUEST,
            "invalid-patch",
        ),
        (
            "application/json",
            "",
            "[1,2]",
            StatusCode::BAD_REQUEST,
            "invalid-patch",
        ),
        (
            "application/json",
            "",
            "{not json",
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        (
            "application/merge-patch+json",
            "",
            "[1]",
            StatusCode::BAD_REQUEST,
            "document-not-object",
        ),
    ];
    for (content_type, query, body, status, code) in cases {
        let response = app
            .patch(&format!("{LOBBY}{query}"))
            .bearer(&token)
            .body(content_type, *body)
            .send()
            .await;
        assert_eq!(
            response.status, *status,
            "{content_type} {query} {body}: {response:?}"
        );
        response.assert_problem(*status, code);
    }
    let no_type = app.patch(LOBBY).bearer(&token).raw_body("{}").send().await;
    no_type.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");
    assert_eq!(
        app.get(LOBBY).bearer(&token).send().await.version(),
        1,
        "nothing was written"
    );
}

#[sqlx::test]
async fn bad_put_bodies_are_rejected(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    let put = |content_type: &'static str, body: Vec<u8>| {
        app.put(LOBBY)
            .bearer(&token)
            .body(content_type, body)
            .send()
    };
    put("text/plain", b"{}".to_vec())
        .await
        .assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");
    put("application/json", b"[]".to_vec())
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "document-not-object");
    for body in [
        &b"{\"a\":"[..],
        b"\xff\xfe",
        br#"{"a":"\ud800"}"#,
        br#"{"a":1e400}"#,
    ] {
        put("application/json", body.to_vec())
            .await
            .assert_problem(StatusCode::BAD_REQUEST, "invalid-json");
    }
    put("application/json", br#"{"a":"nul\u0000"}"#.to_vec())
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-document");
    app.get(LOBBY)
        .bearer(&token)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "room-not-found");
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

#[sqlx::test]
async fn documents_respect_depth_and_size_limits(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    let put = |body: String| {
        app.put(LOBBY)
            .bearer(&token)
            .body("application/json", body)
            .send()
    };

    assert_eq!(put(nested(32)).await.status, StatusCode::CREATED);
    put(nested(33))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "document-too-deep");
    // Far past serde_json's own limit: a clean 400, not a crash.
    let abyss = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    put(abyss)
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "document-too-deep");

    let big = json!({"blob": "x".repeat(64 * 1024)}).to_string();
    put(big)
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "document-too-large");

    let huge = json!({"blob": "x".repeat(1024 * 1024)}).to_string();
    put(huge)
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
}

#[sqlx::test]
async fn limits_apply_to_the_patched_result(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    app.create_room("lobby", json!({"a": "x".repeat(40 * 1024)}))
        .await;
    // Each body is small; the merged document would exceed 64 KiB.
    let grow = app
        .patch(LOBBY)
        .bearer(&token)
        .json(&json!({"b": "y".repeat(30 * 1024)}))
        .send()
        .await;
    grow.assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "document-too-large");

    app.put(LOBBY)
        .bearer(&token)
        .body("application/json", nested(31))
        .send()
        .await;
    // json-patch `add` of an object at depth 31 makes the document 33 deep.
    let path = format!("{}/b", "/a".repeat(30));
    let deepen = app
        .patch(LOBBY)
        .bearer(&token)
        .body(
            "application/json-patch+json",
            json!([{"op": "add", "path": path, "value": {"c": {}}}]).to_string(),
        )
        .send()
        .await;
    deepen.assert_problem(StatusCode::BAD_REQUEST, "document-too-deep");
}

#[sqlx::test]
async fn delete_metadata_resets_to_empty_with_a_new_version(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    app.create_room("lobby", json!({"a": 1})).await;
    let response = app.delete(LOBBY).bearer(&token).if_match(1).send().await;
    assert_eq!(response.status, StatusCode::NO_CONTENT);
    assert_eq!(response.version(), 2);
    let read = app.get(LOBBY).bearer(&token).send().await;
    assert_eq!(
        (read.status, read.version(), read.json()),
        (StatusCode::OK, 2, json!({}))
    );
}

#[sqlx::test]
async fn deleted_room_is_gone_and_recreation_keeps_versions_rising(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    app.create_room("lobby", json!({"a": 1})).await;
    app.patch(LOBBY)
        .bearer(&token)
        .json(&json!({"b": 2}))
        .send()
        .await;

    let deleted = app
        .delete("/v1/rooms/lobby")
        .bearer(&token)
        .if_match(2)
        .send()
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");
    app.get(LOBBY)
        .bearer(&token)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "room-not-found");
    app.delete("/v1/rooms/lobby")
        .bearer(&token)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "room-not-found");
    let listed = app.get("/v1/rooms").bearer(&token).send().await.json();
    assert_eq!(listed["items"], json!([]));

    let recreated = app
        .put(LOBBY)
        .bearer(&token)
        .json(&json!({"fresh": true}))
        .send()
        .await;
    assert_eq!(recreated.status, StatusCode::CREATED);
    assert_eq!(
        recreated.version(),
        3,
        "a re-created room never reuses a version"
    );
    assert_eq!(
        recreated.json(),
        json!({"fresh": true}),
        "the old document is gone"
    );
}

#[sqlx::test]
async fn delete_room_honours_if_match(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    app.create_room("lobby", json!({})).await;
    app.delete("/v1/rooms/lobby")
        .bearer(&token)
        .if_match(9)
        .send()
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED, "version-mismatch");
    assert_eq!(
        app.get(LOBBY).bearer(&token).send().await.status,
        StatusCode::OK
    );
}

#[sqlx::test]
async fn invalid_room_ids_are_400(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    let long = "x".repeat(129);
    for id in ["-lobby", "lob%20by", "caf%C3%A9", long.as_str(), "a%2Fb"] {
        let response = app
            .get(&format!("/v1/rooms/{id}/metadata"))
            .bearer(&token)
            .send()
            .await;
        response.assert_problem(StatusCode::BAD_REQUEST, "invalid-room-id");
        assert!(
            response.json()["detail"]
                .as_str()
                .unwrap()
                .contains("A-Za-z0-9"),
            "the rule is named"
        );
    }
}

async fn list(app: &TestApp, token: &str, query: &str) -> Value {
    let response = app
        .get(&format!("/v1/rooms{query}"))
        .bearer(token)
        .send()
        .await;
    assert_eq!(response.status, StatusCode::OK, "{query}: {response:?}");
    response.json()
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|room| room["id"].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test]
async fn listing_pages_through_every_room_once(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    let mut expected: Vec<String> = (0..7).map(|i| format!("room-{i}")).collect();
    for id in &expected {
        app.create_room(id, json!({})).await;
    }
    expected.sort();

    let mut seen = Vec::new();
    let mut query = "?limit=3".to_owned();
    loop {
        let page = list(&app, &token, &query).await;
        assert!(page["items"].as_array().unwrap().len() <= 3);
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, expected);

    let exact = list(&app, &token, "?limit=7").await;
    assert_eq!(exact["next_cursor"], Value::Null, "no empty trailing page");
}

#[sqlx::test]
async fn listing_filters_by_prefix_and_where(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    app.create_room("game-1", json!({"type": "public", "members": 3, "max": 4}))
        .await;
    app.create_room("game-2", json!({"type": "public", "members": 4, "max": 4}))
        .await;
    app.create_room("game_3", json!({"type": "private", "members": 1, "max": 4}))
        .await;
    app.create_room("chat-1", json!({"type": "public"})).await;

    assert_eq!(
        ids(&list(&app, &token, "?prefix=game-").await),
        ["game-1", "game-2"]
    );
    assert_eq!(
        ids(&list(&app, &token, "?prefix=game_").await),
        ["game_3"],
        "_ is no wildcard"
    );

    let filter = urlencode(r#"$.type == "public" && $.members < $.max"#);
    assert_eq!(
        ids(&list(&app, &token, &format!("?where={filter}")).await),
        ["game-1"]
    );
    let filter = urlencode(r#"$.type == "public""#);
    assert_eq!(
        ids(&list(&app, &token, &format!("?prefix=game&where={filter}")).await),
        ["game-1", "game-2"]
    );
}

#[sqlx::test]
async fn listing_rejects_bad_parameters(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.admin();
    app.create_room("lobby", json!({})).await;
    for (query, code) in [
        ("?where=%24.a%20%3D%3D", "invalid-where"),
        ("?where=not%20a%20path%20(", "invalid-where"),
        ("?limit=0", "invalid-limit"),
        ("?limit=501", "invalid-limit"),
        ("?limit=ten", "invalid-query"),
        ("?cursor=bm90IGEgcm9vbSBpZA", "invalid-cursor"),
        ("?cursor=!!", "invalid-cursor"),
    ] {
        let response = app
            .get(&format!("/v1/rooms{query}"))
            .bearer(&token)
            .send()
            .await;
        response.assert_problem(StatusCode::BAD_REQUEST, code);
    }
}

/// Percent-encodes a query value.
fn urlencode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
