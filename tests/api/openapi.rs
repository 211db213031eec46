//! The committed OpenAPI document matches the code, and the docs are served.

use axum::http::StatusCode;
use sqlx::PgPool;

use crate::helpers::TestApp;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");

/// Fails when `openapi/openapi.json` differs from what the code generates.
/// With `UPDATE_OPENAPI=1` it rewrites the file instead.
#[test]
fn committed_spec_matches_the_code() {
    let generated = format!("{}\n", metacast::api::openapi().to_pretty_json().unwrap());
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date; regenerate it with\n    \
         cargo run -- openapi > openapi/openapi.json\n(or UPDATE_OPENAPI=1 cargo test --test api openapi)"
    );
}

#[test]
fn every_protected_operation_declares_bearer_security() {
    let spec = serde_json::to_value(metacast::api::openapi()).unwrap();
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["operationId"].is_string(),
                "{method} {path} has an operationId"
            );
            if path.starts_with("/v1/") {
                assert_eq!(
                    operation["security"][0]["bearer"],
                    serde_json::json!([]),
                    "{method} {path} declares bearer security"
                );
                assert!(
                    operation["responses"]["401"].is_object(),
                    "{method} {path} documents 401"
                );
            }
        }
    }
}

#[sqlx::test]
async fn spec_and_swagger_ui_are_served(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let spec = app.get("/openapi.json").send().await;
    assert_eq!(spec.status, StatusCode::OK);
    assert_eq!(
        spec.json(),
        serde_json::to_value(metacast::api::openapi()).unwrap()
    );

    let docs = app.get("/docs/").send().await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&docs.body).contains("swagger-ui"));
}
