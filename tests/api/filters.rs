//! Room listings with `?where=` and `?prefix=` as a hostile client sends
//! them: a filter never touches a document its caller cannot read, never
//! answers differently depending on one, and costs others a bounded amount.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestApp, TestResponse, test_settings};

async fn list(app: &TestApp, token: &str, query: &[(&str, &str)]) -> TestResponse {
    let query: String = query
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    app.get(&format!("/v1/rooms?{query}"))
        .bearer(token)
        .send()
        .await
}

fn urlencode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A jsonpath that Postgres refuses to evaluate (SQLSTATE 0A000) only when
/// its left side holds: the right side compares a date with a timestamptz.
fn guess(topic: &str) -> String {
    format!(r#"$.topic == "{topic}" && $.day.datetime() < "2020-01-01 12:00:00+01".datetime()"#)
}

#[sqlx::test]
async fn a_filter_reveals_nothing_of_rooms_the_caller_cannot_read(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("vault", json!({ "topic": "s3cr3t", "day": "2020-01-01" }))
        .await;
    app.create_room("mine", json!({ "topic": "public" })).await;
    for token in [
        app.token_for("eve", &[]),
        app.token_for("eve", &[("mine", &["read"])]),
        app.token_for("eve", &[("vault", &["join", "write_session"])]),
    ] {
        let right = list(&app, &token, &[("where", &guess("s3cr3t"))]).await;
        let wrong = list(&app, &token, &[("where", &guess("nope"))]).await;
        assert_eq!(right.status, StatusCode::OK, "{right:?}");
        assert_eq!(right.status, wrong.status);
        assert_eq!(right.json()["items"], json!([]), "{right:?}");
        assert_eq!(right.json(), wrong.json());
    }
    // A reader of the room gets a clear 400 for the same filter, not a 500.
    let reader = app.token_for("ann", &[("vault", &["read"])]);
    list(&app, &reader, &[("where", &guess("s3cr3t"))])
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-where");
    let page = list(&app, &reader, &[("where", &guess("nope"))]).await;
    assert_eq!(page.json()["items"], json!([]), "{page:?}");
}

#[sqlx::test]
async fn a_filter_only_returns_readable_rooms_in_order_with_paging(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for room in [
        "a1", "a2", "a_3", "b1", "team-1", "team-2", "team-x", "teams-1", "z",
    ] {
        app.create_room(room, json!({ "kind": "x" })).await;
    }
    let token = app.token_for(
        "ann",
        &[
            ("a*", &["read"]),
            ("a1", &["read", "join"]),
            ("team-*", &["read"]),
            ("z", &["read"]),
            ("b1", &["join"]),
        ],
    );
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![
            ("where", r#"$.kind == "x""#.to_owned()),
            ("limit", "2".to_owned()),
        ];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = list(&app, &token, &query).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        let body = page.json();
        seen.extend(
            body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|room| room["id"].as_str().unwrap().to_owned()),
        );
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["a1", "a2", "a_3", "team-1", "team-2", "team-x", "z"]);
    let prefixed = list(&app, &token, &[("prefix", "team-")]).await.json();
    let ids: Vec<&str> = prefixed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|room| room["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["team-1", "team-2", "team-x"]);
}

#[sqlx::test]
async fn a_token_that_reads_nothing_lists_without_postgres(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    app.create_room("r1", json!({})).await;
    // Every pooled connection is held: any query would wait and then 503.
    // (Acquired, not tried: the write's connection may still be on its way
    // back to the pool.)
    let mut held = Vec::new();
    for _ in 0..app.state.db.options().get_max_connections() {
        held.push(app.state.db.acquire().await.unwrap());
    }
    assert!(app.state.db.try_acquire().is_none());
    let nothing = app.token_for("eve", &[("r1", &["join"])]);
    let page = list(&app, &nothing, &[("where", "$.** ? (@ == 1)")]).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    assert_eq!(page.json(), json!({ "items": [], "next_cursor": null }));
    drop(held);
}

#[sqlx::test]
async fn costly_filters_cannot_starve_other_requests(pool: PgPool) {
    let mut settings = test_settings();
    settings.db_max_connections = 8;
    // The pool as the server builds it (the test's own pool is larger).
    let options = (*pool.connect_options()).clone();
    let pool = metacast::db::pool_options(&settings)
        .connect_with(options)
        .await
        .unwrap();
    let app = TestApp::with_settings(pool, settings).await;
    // A quadratic filter over a long array: far slower than the bound.
    let items: Vec<Value> = (0..6000).map(|i| json!(i)).collect();
    app.create_room("big", json!({ "a": items })).await;
    app.create_room("plain", json!({ "topic": "ok" })).await;
    let reader = app.token_for("ann", &[("big", &["read"])]);
    let weapon = "$.a[*] ? (@ == $.a[*] && @ == $.a[*]) == 1";
    let attacks: Vec<_> = (0..16)
        .map(|_| {
            let app_token = reader.clone();
            let app = &app;
            async move { list(app, &app_token, &[("where", weapon)]).await }
        })
        .collect();
    let plain = async {
        // Let the attacks take their connections first.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let read = app.get("/v1/rooms/plain").bearer(&app.admin()).send().await;
            let listing = list(&app, &app.admin(), &[("prefix", "pl")]).await;
            statuses.push((read.status, listing.status));
        }
        statuses
    };
    let (answers, statuses) = tokio::join!(futures_util::future::join_all(attacks), plain);
    for answer in &answers {
        assert!(
            answer.status == StatusCode::BAD_REQUEST
                || answer.status == StatusCode::SERVICE_UNAVAILABLE,
            "{answer:?}"
        );
        let code = answer.json()["code"].as_str().unwrap().to_owned();
        assert!(
            code == "invalid-where" || code == "filters-busy",
            "{answer:?}"
        );
    }
    assert!(
        statuses
            .iter()
            .all(|&(a, b)| a == StatusCode::OK && b == StatusCode::OK),
        "ordinary requests failed while filters ran: {statuses:?}"
    );
}

#[sqlx::test]
async fn hostile_listing_input_is_a_400_not_a_500(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("r1", json!({ "n": 1 })).await;
    let admin = app.admin();
    for (query, code) in [
        (vec![("prefix", "\0")], "invalid-prefix"),
        (vec![("prefix", "a b")], "invalid-prefix"),
        (vec![("where", "$.n == \"\0\"")], "invalid-where"),
        (
            vec![("where", "$.** ? (@.** ? (@.** == 1))")],
            "invalid-where",
        ),
        (vec![("where", "$.n like_regex \"(\"")], "invalid-where"),
        (
            vec![("where", &"$.n == 1 && ".repeat(500))],
            "invalid-where",
        ),
    ] {
        list(&app, &admin, &query)
            .await
            .assert_problem(StatusCode::BAD_REQUEST, code);
    }
    // A history cursor dated before 4713 BC, which Postgres cannot store.
    let cursor = metacast_cursor(&format!(
        "{}/{}",
        -300_000_000_000_000_000i64,
        uuid::Uuid::nil()
    ));
    app.get(&format!("/v1/rooms/r1/sessions?cursor={cursor}"))
        .bearer(&admin)
        .send()
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-cursor");
}

fn metacast_cursor(position: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(position)
}
