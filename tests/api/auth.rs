//! Authentication and permissions (SPEC §6), seen from a client: which
//! tokens get in, which are turned away with `401 invalid_token`, and what a
//! valid token may do in which room (`403 forbidden` otherwise).
//!
//! Tokens are minted here with `jsonwebtoken` from raw JSON claims, so every
//! field (and the header) is under the test's control.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use metacast::config::Settings;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{self, SECRET, TestApp, TestResponse};

const RSA_PRIVATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/keys/rsa-private.pem"
);
const RSA_PUBLIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/keys/rsa-public.pem"
);
const EC_PRIVATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/keys/ec-private.pem"
);
const EC_PUBLIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/keys/ec-public.pem"
);
const ED_PRIVATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/keys/ed25519-private.pem"
);
const ED_PUBLIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/keys/ed25519-public.pem"
);

/// `(pattern, actions)` grants, as `TestApp::token_for` takes them.
type Grants<'a> = &'a [(&'a str, &'a [&'a str])];

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "metacast";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// Valid claims for an admin, ten minutes to live.
fn admin_claims() -> Value {
    json!({ "sub": "alice", "exp": now() + 600, "metacast": { "admin": true } })
}

/// `admin_claims()` with `changes` merged in at the top level (a `null`
/// value removes the claim).
fn claims_with(changes: Value) -> Value {
    let mut claims = admin_claims();
    let object = claims.as_object_mut().expect("claims are an object");
    for (name, value) in changes.as_object().expect("changes are an object") {
        if value.is_null() {
            object.remove(name);
        } else {
            object.insert(name.clone(), value.clone());
        }
    }
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let header = Header {
        kid: kid.map(str::to_owned),
        ..Header::new(alg)
    };
    jsonwebtoken::encode(&header, claims, key).expect("signable token")
}

/// An HS256 token signed with the test apps' secret.
fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| panic!("cannot read {path}: {err}"))
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read(RSA_PRIVATE)).expect("RSA private key")
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&read(EC_PRIVATE)).expect("EC private key")
}

fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(&read(ED_PRIVATE)).expect("Ed25519 private key")
}

/// Test settings (HS256 secret included) with `(kid, path)` public keys.
fn settings_with_keys(keys: &[(&str, &str)]) -> Settings {
    let mut settings = helpers::test_settings();
    settings.jwt.public_keys = keys
        .iter()
        .map(|(kid, path)| ((*kid).to_owned(), read(path)))
        .collect();
    settings
}

/// Base64url of a JSON value, as in a JWT segment.
fn segment(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// `GET uri` with the given `Authorization` header value, if any.
async fn get_with(app: &TestApp, uri: &str, authorization: Option<&str>) -> TestResponse {
    let request = app.get(uri);
    match authorization {
        Some(value) => request.header("authorization", value),
        None => request,
    }
    .send()
    .await
}

/// `GET /v1/rooms` with a bearer token.
async fn list(app: &TestApp, token: &str) -> TestResponse {
    app.get("/v1/rooms").bearer(token).send().await
}

/// The ids of a room listing, asserting it succeeded.
async fn listed_ids(app: &TestApp, token: &str) -> Vec<String> {
    let response = list(app, token).await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    response.json()["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {response:?}"))
        .iter()
        .map(|room| {
            room["id"]
                .as_str()
                .expect("room ids are strings")
                .to_owned()
        })
        .collect()
}

/// A 401 problem with `WWW-Authenticate: Bearer … error="invalid_token"`.
#[track_caller]
fn assert_unauthorized(response: &TestResponse, case: &str) {
    assert_eq!(
        response.status,
        StatusCode::UNAUTHORIZED,
        "{case}: {response:?}"
    );
    let challenge = response
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{case}: no WWW-Authenticate: {response:?}"));
    assert!(
        challenge.starts_with("Bearer") && challenge.contains(r#"error="invalid_token""#),
        "{case}: {challenge}"
    );
    response.assert_problem(StatusCode::UNAUTHORIZED, "invalid-token");
}

#[track_caller]
fn assert_ok(response: &TestResponse, case: &str) {
    assert_eq!(response.status, StatusCode::OK, "{case}: {response:?}");
}

#[track_caller]
fn assert_forbidden(response: &TestResponse, case: &str) {
    assert_eq!(
        response.status,
        StatusCode::FORBIDDEN,
        "{case}: {response:?}"
    );
    response.assert_problem(StatusCode::FORBIDDEN, "forbidden");
}

/// Asserts each `(case, token)` gets a 401 on the listing and on a room route.
async fn assert_all_unauthorized(app: &TestApp, cases: &[(&str, String)]) {
    for (case, token) in cases {
        for uri in ["/v1/rooms", "/v1/rooms/lobby/metadata"] {
            let response = get_with(app, uri, Some(&format!("Bearer {token}"))).await;
            assert_unauthorized(&response, &format!("{case} on {uri}"));
        }
    }
}

// ---------------------------------------------------------------------------
// Missing, malformed and invalid tokens
// ---------------------------------------------------------------------------

#[sqlx::test]
async fn rejects_missing_malformed_and_invalid_tokens(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("lobby", json!({})).await;

    // The control: the same construction, untouched, is accepted.
    let valid = hs256(&admin_claims());
    for uri in ["/v1/rooms", "/v1/rooms/lobby/metadata"] {
        let response = get_with(&app, uri, Some(&format!("Bearer {valid}"))).await;
        assert_ok(&response, &format!("control on {uri}"));
    }

    let other_secret = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"another-secret-another-secret-another"),
        &admin_claims(),
    );

    let tampered = {
        let original = hs256(&json!({
            "sub": "alice", "exp": now() + 600,
            "metacast": { "rooms": { "lobby": ["read"] } }
        }));
        let parts: Vec<&str> = original.split('.').collect();
        let forged = segment(&json!({
            "sub": "mallory", "exp": now() + 600,
            "metacast": { "rooms": { "lobby": ["read"] } }
        }));
        format!("{}.{forged}.{}", parts[0], parts[2])
    };

    let alg_none = format!(
        "{}.{}.",
        segment(&json!({ "alg": "none", "typ": "JWT" })),
        segment(&admin_claims())
    );

    // The signature's first character changed: same length, wrong MAC (the
    // last one would only flip base64 padding bits some decoders ignore).
    let tampered_signature = {
        let (head, signature) = valid.rsplit_once('.').unwrap();
        let first = if signature.starts_with('A') { 'B' } else { 'A' };
        format!("{head}.{first}{}", &signature[1..])
    };

    let alg_none_capitalised = format!(
        "{}.{}.",
        segment(&json!({ "alg": "None", "typ": "JWT" })),
        segment(&admin_claims())
    );

    let oversized = hs256(&claims_with(json!({ "padding": "x".repeat(9 * 1024) })));
    assert!(oversized.len() > 8 * 1024);

    let bearer = |token: &str| Some(format!("Bearer {token}"));
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing Authorization", None),
        ("Basic scheme", Some("Basic YWxpY2U6c2VjcmV0".to_owned())),
        ("token without scheme", Some(valid.clone())),
        ("Bearer without token", Some("Bearer ".to_owned())),
        ("garbage token", bearer("not-a-jwt")),
        ("three garbage parts", bearer("abc.def.ghi")),
        ("signed with another secret", bearer(&other_secret)),
        ("tampered payload", bearer(&tampered)),
        (
            "expired 120 s ago",
            bearer(&hs256(&claims_with(json!({ "exp": now() - 120 })))),
        ),
        ("alg none", bearer(&alg_none)),
        (
            "alg none, signature kept",
            bearer(&format!(
                "{}{}",
                alg_none,
                valid.rsplit('.').next().unwrap()
            )),
        ),
        (
            "no exp",
            bearer(&hs256(&claims_with(json!({ "exp": null })))),
        ),
        (
            "no sub",
            bearer(&hs256(&claims_with(json!({ "sub": null })))),
        ),
        (
            "nbf in an hour",
            bearer(&hs256(&claims_with(json!({ "nbf": now() + 3600 })))),
        ),
        ("oversized (> 8 KiB)", bearer(&oversized)),
        ("tampered signature", bearer(&tampered_signature)),
        (
            "signature stripped",
            bearer(&format!("{}.", valid.rsplit_once('.').unwrap().0)),
        ),
        (
            "HS512 with our secret",
            bearer(&sign(
                Algorithm::HS512,
                None,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                &admin_claims(),
            )),
        ),
        ("alg None (capitalised)", bearer(&alg_none_capitalised)),
        (
            "expired 10 s ago (beyond the leeway)",
            bearer(&hs256(&claims_with(json!({ "exp": now() - 10 })))),
        ),
        (
            "nbf in 10 minutes",
            bearer(&hs256(&claims_with(json!({ "nbf": now() + 600 })))),
        ),
        (
            "exp as a string",
            bearer(&hs256(&claims_with(
                json!({ "exp": (now() + 600).to_string() }),
            ))),
        ),
        (
            "sub as a number",
            bearer(&hs256(&claims_with(json!({ "sub": 42 })))),
        ),
        (
            "empty sub",
            bearer(&hs256(&claims_with(json!({ "sub": "" })))),
        ),
        (
            "payload not JSON",
            bearer(&format!(
                "{}.{}.{}",
                valid.split('.').next().unwrap(),
                URL_SAFE_NO_PAD.encode("not json"),
                valid.rsplit('.').next().unwrap()
            )),
        ),
        ("four segments", bearer(&format!("{valid}.x"))),
        (
            "header too large for the token limit",
            bearer(&"a".repeat(64 * 1024)),
        ),
    ];

    for (case, authorization) in &cases {
        for uri in ["/v1/rooms", "/v1/rooms/lobby/metadata"] {
            let response = get_with(&app, uri, authorization.as_deref()).await;
            assert_unauthorized(&response, &format!("{case} on {uri}"));
        }
    }
}

#[sqlx::test]
async fn a_401_wins_over_an_invalid_room_id(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let response = get_with(&app, "/v1/rooms/-bad/metadata", None).await;
    assert_unauthorized(&response, "no token, invalid room id");
}

// ---------------------------------------------------------------------------
// Public keys: RS256, ES256, EdDSA, chosen by kid
// ---------------------------------------------------------------------------

#[sqlx::test]
async fn accepts_rs256_es256_and_eddsa_tokens(pool: PgPool) {
    let app = TestApp::with_settings(
        pool,
        settings_with_keys(&[("rsa", RSA_PUBLIC), ("ec", EC_PUBLIC), ("ed", ED_PUBLIC)]),
    )
    .await;
    let claims = admin_claims();
    let cases = [
        (
            "RS256",
            sign(Algorithm::RS256, Some("rsa"), &rsa_key(), &claims),
        ),
        (
            "ES256",
            sign(Algorithm::ES256, Some("ec"), &ec_key(), &claims),
        ),
        (
            "EdDSA",
            sign(Algorithm::EdDSA, Some("ed"), &ed_key(), &claims),
        ),
    ];
    for (case, token) in &cases {
        assert_ok(&list(&app, token).await, case);
    }
    // The HS256 secret still works next to the public keys.
    assert_ok(&list(&app, &hs256(&claims)).await, "HS256 alongside");
}

#[sqlx::test]
async fn each_single_public_key_verifies_its_own_algorithm(pool: PgPool) {
    let claims = admin_claims();
    let cases = [
        (
            "RS256",
            RSA_PUBLIC,
            sign(Algorithm::RS256, Some("k1"), &rsa_key(), &claims),
        ),
        (
            "ES256",
            EC_PUBLIC,
            sign(Algorithm::ES256, Some("k1"), &ec_key(), &claims),
        ),
        (
            "EdDSA",
            ED_PUBLIC,
            sign(Algorithm::EdDSA, Some("k1"), &ed_key(), &claims),
        ),
    ];
    for (case, public, token) in &cases {
        let mut settings = settings_with_keys(&[("k1", public)]);
        // Public keys alone are enough.
        settings.jwt.secret = None;
        let app = TestApp::with_settings(pool.clone(), settings).await;
        assert_ok(&list(&app, token).await, case);
    }
}

#[sqlx::test]
async fn the_kid_chooses_the_key(pool: PgPool) {
    let app = TestApp::with_settings(
        pool,
        settings_with_keys(&[("rsa-1", RSA_PUBLIC), ("ec-1", EC_PUBLIC)]),
    )
    .await;
    let claims = admin_claims();

    let rs256 = sign(Algorithm::RS256, Some("rsa-1"), &rsa_key(), &claims);
    let es256 = sign(Algorithm::ES256, Some("ec-1"), &ec_key(), &claims);
    assert_ok(&list(&app, &rs256).await, "RS256 with kid rsa-1");
    assert_ok(&list(&app, &es256).await, "ES256 with kid ec-1");

    let tampered_rs256 = {
        let parts: Vec<&str> = rs256.split('.').collect();
        let forged = segment(&claims_with(json!({ "sub": "mallory" })));
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let cases = [
        (
            "unknown kid",
            sign(Algorithm::RS256, Some("rsa-2"), &rsa_key(), &claims),
        ),
        (
            "RS256 header, kid of the EC key",
            sign(Algorithm::RS256, Some("ec-1"), &rsa_key(), &claims),
        ),
        (
            "ES256 header, kid of the RSA key",
            sign(Algorithm::ES256, Some("rsa-1"), &ec_key(), &claims),
        ),
        (
            "EdDSA token, no Ed25519 key configured",
            sign(Algorithm::EdDSA, Some("rsa-1"), &ed_key(), &claims),
        ),
        (
            "no kid with two keys configured",
            sign(Algorithm::RS256, None, &rsa_key(), &claims),
        ),
        ("RS256 with tampered payload", tampered_rs256),
    ];
    assert_all_unauthorized(&app, &cases).await;
}

// ---------------------------------------------------------------------------
// Algorithm confusion
// ---------------------------------------------------------------------------

/// HS256 tokens whose HMAC secret is the RSA public key's PEM, the classic
/// RS256 → HS256 confusion attack (with and without the key's kid).
fn forged_with_public_key() -> Vec<(&'static str, String)> {
    let secret = EncodingKey::from_secret(&read(RSA_PUBLIC));
    let claims = admin_claims();
    vec![
        (
            "HS256 keyed with the RSA public PEM, kid rsa",
            sign(Algorithm::HS256, Some("rsa"), &secret, &claims),
        ),
        (
            "HS256 keyed with the RSA public PEM, no kid",
            sign(Algorithm::HS256, None, &secret, &claims),
        ),
    ]
}

#[sqlx::test]
async fn algorithm_confusion_without_hs_secret_is_rejected(pool: PgPool) {
    let mut settings = settings_with_keys(&[("rsa", RSA_PUBLIC)]);
    settings.jwt.secret = None;
    let app = TestApp::with_settings(pool, settings).await;

    // The key itself works…
    let genuine = sign(Algorithm::RS256, Some("rsa"), &rsa_key(), &admin_claims());
    assert_ok(&list(&app, &genuine).await, "genuine RS256");

    // …but neither forged nor genuine-secret HS256 tokens are accepted.
    let mut cases = forged_with_public_key();
    cases.push((
        "HS256 with the usual test secret, none configured",
        hs256(&admin_claims()),
    ));
    assert_all_unauthorized(&app, &cases).await;
}

#[sqlx::test]
async fn algorithm_confusion_with_hs_secret_is_rejected(pool: PgPool) {
    let app = TestApp::with_settings(pool, settings_with_keys(&[("rsa", RSA_PUBLIC)])).await;
    assert_ok(&list(&app, &hs256(&admin_claims())).await, "genuine HS256");
    assert_all_unauthorized(&app, &forged_with_public_key()).await;
}

// ---------------------------------------------------------------------------
// Issuer and audience
// ---------------------------------------------------------------------------

#[sqlx::test]
async fn issuer_and_audience_are_checked_when_configured(pool: PgPool) {
    let mut settings = helpers::test_settings();
    settings.jwt.issuer = Some(ISSUER.to_owned());
    settings.jwt.audience = Some(AUDIENCE.to_owned());
    let app = TestApp::with_settings(pool, settings).await;

    let accepted = [
        (
            "correct iss and aud",
            hs256(&claims_with(json!({ "iss": ISSUER, "aud": AUDIENCE }))),
        ),
        (
            "aud as an array containing ours",
            hs256(&claims_with(
                json!({ "iss": ISSUER, "aud": ["someone-else", AUDIENCE] }),
            )),
        ),
        // What the server mints for itself carries the configured iss/aud.
        ("minted by the server", app.admin()),
    ];
    for (case, token) in &accepted {
        assert_ok(&list(&app, token).await, case);
    }

    let rejected = [
        (
            "wrong iss",
            hs256(&claims_with(
                json!({ "iss": "https://evil.example", "aud": AUDIENCE }),
            )),
        ),
        (
            "missing iss",
            hs256(&claims_with(json!({ "aud": AUDIENCE }))),
        ),
        (
            "wrong aud",
            hs256(&claims_with(
                json!({ "iss": ISSUER, "aud": "someone-else" }),
            )),
        ),
        (
            "aud array without ours",
            hs256(&claims_with(json!({ "iss": ISSUER, "aud": ["a", "b"] }))),
        ),
        ("missing aud", hs256(&claims_with(json!({ "iss": ISSUER })))),
    ];
    assert_all_unauthorized(&app, &rejected).await;
}

#[sqlx::test]
async fn audience_is_not_judged_when_not_configured(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = hs256(&claims_with(json!({ "aud": "some-other-service" })));
    assert_ok(&list(&app, &token).await, "aud present, none configured");
    let token = hs256(&claims_with(json!({ "iss": "https://anyone.example" })));
    assert_ok(&list(&app, &token).await, "iss present, none configured");
}

// ---------------------------------------------------------------------------
// The shape of the metacast claim
// ---------------------------------------------------------------------------

#[sqlx::test]
async fn metacast_claims_of_the_wrong_shape_are_rejected(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let with_metacast = |metacast: Value| hs256(&claims_with(json!({ "metacast": metacast })));

    // Control: a well-formed claim with every field is accepted.
    let good = with_metacast(json!({
        "admin": false,
        "rooms": { "lobby": ["read", "join", "write_session"], "team-*": ["read"], "*": ["join"] },
        "own_metadata": true
    }));
    assert_ok(&list(&app, &good).await, "well-formed claim");

    let cases = [
        (
            "rooms not an object",
            with_metacast(json!({ "rooms": ["lobby"] })),
        ),
        (
            "rooms as a string",
            with_metacast(json!({ "rooms": "lobby" })),
        ),
        (
            "actions not a list",
            with_metacast(json!({ "rooms": { "lobby": "read" } })),
        ),
        (
            "unknown action fly",
            with_metacast(json!({ "rooms": { "lobby": ["read", "fly"] } })),
        ),
        (
            "star inside a pattern",
            with_metacast(json!({ "rooms": { "a*b": ["read"] } })),
        ),
        (
            "star at the start of a pattern",
            with_metacast(json!({ "rooms": { "*lobby": ["read"] } })),
        ),
        (
            "invalid room id as pattern",
            with_metacast(json!({ "rooms": { "lob by": ["read"] } })),
        ),
        (
            "admin as a string",
            with_metacast(json!({ "admin": "true" })),
        ),
        (
            "unknown field in metacast",
            with_metacast(json!({ "admin": false, "superuser": true })),
        ),
        ("metacast not an object", with_metacast(json!("admin"))),
        ("admin as a number", with_metacast(json!({ "admin": 1 }))),
        ("admin null", with_metacast(json!({ "admin": null }))),
        (
            "actions with a non-string",
            with_metacast(json!({ "rooms": { "lobby": ["read", 1] } })),
        ),
        (
            "own_metadata as a string",
            with_metacast(json!({ "own_metadata": "yes" })),
        ),
    ];
    assert_all_unauthorized(&app, &cases).await;

    // Patterns crafted to reach beyond a prefix are not patterns at all: the
    // token is refused rather than half-understood.
    let escapes = [
        "..*",
        ".*",
        "lobby/../*",
        "lobby%2F*",
        "%2E%2E*",
        "^lobby$",
        "lobby|admin",
        "[a-z]*",
        "lobby\\*",
        "lobby?",
        "lobby\u{0}",
        "lobb\u{443}",
        "\u{ff4c}obby",
        "lobby\u{200b}*",
        " lobby",
    ];
    let cases: Vec<(&str, String)> = escapes
        .iter()
        .map(|pattern| {
            (
                *pattern,
                with_metacast(json!({ "rooms": { *pattern: ["read"] } })),
            )
        })
        .collect();
    assert_all_unauthorized(&app, &cases).await;
}

// ---------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------

#[sqlx::test]
async fn read_may_get_but_not_write(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("lobby", json!({ "topic": "standup" }))
        .await;
    let reader = app.token_for("reader", &[("lobby", &["read"])]);

    let response = app
        .get("/v1/rooms/lobby/metadata")
        .bearer(&reader)
        .send()
        .await;
    assert_ok(&response, "GET metadata with read");
    assert_eq!(response.json(), json!({ "topic": "standup" }));
    assert_ok(
        &app.get("/v1/rooms/lobby").bearer(&reader).send().await,
        "GET room with read",
    );

    let put = app
        .put("/v1/rooms/lobby/metadata")
        .bearer(&reader)
        .json(&json!({ "topic": "hijacked" }))
        .send()
        .await;
    assert_forbidden(&put, "PUT with read");
    let patch = app
        .patch("/v1/rooms/lobby/metadata")
        .bearer(&reader)
        .body("application/merge-patch+json", r#"{"topic":"hijacked"}"#)
        .send()
        .await;
    assert_forbidden(&patch, "PATCH with read");
    let reset = app
        .delete("/v1/rooms/lobby/metadata")
        .bearer(&reader)
        .send()
        .await;
    assert_forbidden(&reset, "DELETE metadata with read");

    // Nothing was written.
    let response = app
        .get("/v1/rooms/lobby/metadata")
        .bearer(&app.admin())
        .send()
        .await;
    assert_eq!(response.json(), json!({ "topic": "standup" }));
}

#[sqlx::test]
async fn write_room_may_put(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let writer = app.token_for("writer", &[("lobby", &["write_room"])]);

    let created = app
        .put("/v1/rooms/lobby/metadata")
        .bearer(&writer)
        .json(&json!({ "topic": "standup" }))
        .send()
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let replaced = app
        .put("/v1/rooms/lobby/metadata")
        .bearer(&writer)
        .json(&json!({ "topic": "retro" }))
        .send()
        .await;
    assert_ok(&replaced, "PUT on the existing room");
    assert_eq!(replaced.json(), json!({ "topic": "retro" }));

    // write_room does not imply read, nor any other room.
    assert_forbidden(
        &app.get("/v1/rooms/lobby/metadata")
            .bearer(&writer)
            .send()
            .await,
        "GET with only write_room",
    );
    assert_forbidden(
        &app.put("/v1/rooms/lobby2/metadata")
            .bearer(&writer)
            .json(&json!({}))
            .send()
            .await,
        "PUT on another room",
    );
}

#[sqlx::test]
async fn prefix_patterns_cover_only_their_prefix(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for room in ["team-1", "team", "teams-1", "xteam-1", "team_1"] {
        app.create_room(room, json!({})).await;
    }
    let token = app.token_for("member", &[("team-*", &["read"])]);
    let get = |room: &str| {
        app.get(&format!("/v1/rooms/{room}/metadata"))
            .bearer(&token)
            .send()
    };

    assert_ok(&get("team-1").await, "team-1 under team-*");
    for room in ["team", "teams-1", "xteam-1", "team_1"] {
        assert_forbidden(&get(room).await, &format!("{room} under team-*"));
    }
}

#[sqlx::test]
async fn patterns_grant_no_room_beyond_their_own(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let rooms = [
        "lobby", "lobby2", "lobbyx", "lobby.1", "lobby-1", "Lobby", "lobb", "xlobby", "team:4",
        "team:42",
    ];
    for room in rooms {
        app.create_room(room, json!({})).await;
    }
    // (pattern, the rooms it covers); every other room of `rooms` is a 403.
    let cases: [(&str, &[&str]); 6] = [
        ("lobby", &["lobby"]),
        (
            "lobby*",
            &["lobby", "lobby2", "lobbyx", "lobby.1", "lobby-1"],
        ),
        // `.` is a literal character, not a regex wildcard.
        ("lobby.*", &["lobby.1"]),
        ("Lobby", &["Lobby"]),
        ("team:4", &["team:4"]),
        ("team:4*", &["team:4", "team:42"]),
    ];
    for (pattern, covered) in cases {
        let token = app.token_for("prober", &[(pattern, &["read"])]);
        for room in rooms {
            let response = app
                .get(&format!("/v1/rooms/{room}/metadata"))
                .bearer(&token)
                .send()
                .await;
            let case = format!("{pattern} on {room}");
            if covered.contains(&room) {
                assert_ok(&response, &case);
            } else {
                assert_forbidden(&response, &case);
            }
        }
        let mut listed = listed_ids(&app, &token).await;
        listed.sort();
        let mut expected: Vec<&str> = covered.to_vec();
        expected.sort();
        assert_eq!(listed, expected, "listing with {pattern}");
    }

    // Paths that dress up a covered room as another one are not room ids.
    let token = app.token_for("prober", &[("lobby*", &["read"])]);
    for room in [
        "lobby%2F..%2Fsecret",
        "lobby%2F%2E%2E",
        "%2E%2E",
        "lobb%D1%83",
        "lobby%00",
        "lobby%20",
        "lobby%E2%80%8B",
    ] {
        app.get(&format!("/v1/rooms/{room}/metadata"))
            .bearer(&token)
            .send()
            .await
            .assert_problem(StatusCode::BAD_REQUEST, "invalid-room-id");
    }
}

#[sqlx::test]
async fn forbidden_does_not_reveal_whether_the_room_exists(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("secret", json!({ "hidden": true })).await;
    let token = app.token_for("outsider", &[("lobby", &["read", "write_room"])]);

    let requests: [(Method, &str); 5] = [
        (Method::GET, "/v1/rooms/{room}"),
        (Method::GET, "/v1/rooms/{room}/metadata"),
        (Method::PUT, "/v1/rooms/{room}/metadata"),
        (Method::DELETE, "/v1/rooms/{room}/metadata"),
        (Method::DELETE, "/v1/rooms/{room}"),
    ];
    for (method, template) in requests {
        let mut answers = Vec::new();
        for room in ["secret", "nowhere"] {
            let uri = template.replace("{room}", room);
            let response = app
                .request(method.clone(), &uri)
                .bearer(&token)
                .json(&json!({}))
                .send()
                .await;
            let case = format!("{method} {uri}");
            assert_forbidden(&response, &case);
            let body = response.json();
            // Only the room's own name may differ between the two answers.
            let detail = body["detail"].as_str().unwrap().replace(room, "{room}");
            answers.push((response.status, body["code"].clone(), detail));
        }
        assert_eq!(answers[0], answers[1], "{method} {template}");
    }

    // And the forbidden PUT did not create the absent room.
    let response = app
        .get("/v1/rooms/nowhere/metadata")
        .bearer(&app.admin())
        .send()
        .await;
    response.assert_problem(StatusCode::NOT_FOUND, "room-not-found");
}

#[sqlx::test]
async fn deleting_a_room_needs_delete(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("doomed", json!({})).await;

    let writer = app.token_for("writer", &[("doomed", &["read", "write_room", "moderate"])]);
    assert_forbidden(
        &app.delete("/v1/rooms/doomed").bearer(&writer).send().await,
        "DELETE room with write_room",
    );
    assert_ok(
        &app.get("/v1/rooms/doomed").bearer(&writer).send().await,
        "the room survived",
    );

    let deleter = app.token_for("deleter", &[("doomed", &["delete"])]);
    let response = app.delete("/v1/rooms/doomed").bearer(&deleter).send().await;
    assert_eq!(response.status, StatusCode::NO_CONTENT, "{response:?}");
    app.get("/v1/rooms/doomed")
        .bearer(&writer)
        .send()
        .await
        .assert_problem(StatusCode::NOT_FOUND, "room-not-found");
}

#[sqlx::test]
async fn admin_may_do_everything(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let admin = app.admin();

    let created = app
        .put("/v1/rooms/any-room/metadata")
        .bearer(&admin)
        .json(&json!({ "a": 1 }))
        .send()
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let patched = app
        .patch("/v1/rooms/any-room/metadata")
        .bearer(&admin)
        .body("application/merge-patch+json", r#"{"b":2}"#)
        .send()
        .await;
    assert_ok(&patched, "PATCH");
    assert_eq!(patched.json(), json!({ "a": 1, "b": 2 }));
    assert_ok(
        &app.get("/v1/rooms/any-room/metadata")
            .bearer(&admin)
            .send()
            .await,
        "GET metadata",
    );
    assert_ok(
        &app.get("/v1/rooms/any-room").bearer(&admin).send().await,
        "GET room",
    );
    assert_eq!(listed_ids(&app, &admin).await, ["any-room"]);
    let reset = app
        .delete("/v1/rooms/any-room/metadata")
        .bearer(&admin)
        .send()
        .await;
    assert_eq!(reset.status, StatusCode::NO_CONTENT, "{reset:?}");
    let deleted = app.delete("/v1/rooms/any-room").bearer(&admin).send().await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");
    assert!(listed_ids(&app, &admin).await.is_empty());
}

#[sqlx::test]
async fn an_invalid_room_id_with_a_valid_token_is_a_bad_request(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let tokens = [
        ("admin", app.admin()),
        ("reader", app.token_for("reader", &[("*", &["read"])])),
    ];
    let long = "x".repeat(129);
    for (who, token) in &tokens {
        for room in ["-lobby", "a%20b", "%C3%A9t%C3%A9", "%FF", "lob%2Fby", &long] {
            for uri in [
                format!("/v1/rooms/{room}/metadata"),
                format!("/v1/rooms/{room}"),
            ] {
                let response = app.get(&uri).bearer(token).send().await;
                assert_eq!(
                    response.status,
                    StatusCode::BAD_REQUEST,
                    "{who} GET {uri}: {response:?}"
                );
                response.assert_problem(StatusCode::BAD_REQUEST, "invalid-room-id");
            }
        }
    }
}

#[sqlx::test]
async fn listing_shows_only_readable_rooms(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for room in ["lobby", "team-1", "team_1", "teamx"] {
        app.create_room(room, json!({})).await;
    }

    let cases: [(&str, Grants<'_>, &[&str]); 6] = [
        (
            "lobby and team-*",
            &[("lobby", &["read"]), ("team-*", &["read"])],
            &["lobby", "team-1"],
        ),
        // `_` is a literal character, not a LIKE wildcard.
        ("team_*", &[("team_*", &["read"])], &["team_1"]),
        ("exact team_1", &[("team_1", &["read"])], &["team_1"]),
        (
            "actions other than read",
            &[
                ("lobby", &["join", "write_room", "delete"]),
                ("team-*", &["moderate"]),
            ],
            &[],
        ),
        ("no grants", &[], &[]),
        (
            "star",
            &[("*", &["read"])],
            &["lobby", "team-1", "team_1", "teamx"],
        ),
    ];
    for (case, grants, expected) in cases {
        let token = app.token_for("lister", grants);
        assert_eq!(listed_ids(&app, &token).await, expected, "{case}");
    }
    assert_eq!(
        listed_ids(&app, &app.admin()).await,
        ["lobby", "team-1", "team_1", "teamx"],
        "admin"
    );
}
