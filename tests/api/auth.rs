//! Bearer JWTs, one configured algorithm, exact 401s (`docs/api.md#authentication`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use biscuit::jwa::SignatureAlgorithm;
use biscuit::jws::Secret;
use serde_json::{json, Value};

use crate::helpers::{claims_for, now, sign, spawn_app, spawn_app_with, TestApp};

const PATH: &str = "/api/v2/user/2/connection_status/";

fn hs256(app: &TestApp) -> Secret {
    use secrecy::ExposeSecret;
    let secret = app.settings.jwt.jwt_secret.as_ref().expect("secret");
    Secret::Bytes(secret.expose_secret().as_bytes().to_vec())
}

async fn assert_invalid(app: &TestApp, token: &str, why: &str) {
    let response = app.get_with_token(PATH, token).await;
    assert_eq!(response.status(), 401, "{why}");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .expect("WWW-Authenticate")
        .to_str()
        .expect("ascii");
    assert!(challenge.starts_with("Bearer"), "{why}: {challenge}");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body, json!({"detail": "Invalid token."}), "{why}");
}

async fn assert_ok(app: &TestApp, token: &str, why: &str) {
    let response = app.get_with_token(PATH, token).await;
    assert_eq!(response.status(), 200, "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_is_401_not_provided() {
    let app = spawn_app().await;
    for header in [None, Some("Basic dXNlcjpwYXNz"), Some("Token abc")] {
        let mut request = app.client.get(format!("{}{PATH}", app.address));
        if let Some(h) = header {
            request = request.header("Authorization", h);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 401, "{header:?}");
        assert!(response.headers().get("www-authenticate").is_some());
        let body: Value = response.json().await.expect("json");
        assert_eq!(
            body,
            json!({"detail": "Authentication credentials were not provided."})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_hs256_token_is_the_same_401() {
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    let key = hs256(&app);
    let alg = SignatureAlgorithm::HS256;
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let none_claims = URL_SAFE_NO_PAD.encode(claims_for(json!("1")).to_string());
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "empty"),
        ("garbage".into(), "garbage"),
        ("a.b.c".into(), "three garbage parts"),
        (format!("{none_header}.{none_claims}."), "alg none"),
        (
            sign(alg, &key, json!({"sub": "1", "exp": now() - 3600})),
            "expired",
        ),
        (
            sign(
                alg,
                &key,
                json!({"sub": "1", "exp": now() + 600, "nbf": now() + 3600}),
            ),
            "not yet valid",
        ),
        (
            sign(
                alg,
                &key,
                json!({"sub": "1", "exp": now() + 600, "iat": now() + 3600}),
            ),
            "issued in the future",
        ),
        (sign(alg, &key, json!({"sub": "1"})), "no exp"),
        (
            sign(alg, &key, json!({"sub": "1", "exp": "tomorrow"})),
            "exp not a number",
        ),
        (
            sign(alg, &key, json!({"sub": "1", "exp": i64::MAX})),
            "exp beyond any date",
        ),
        (
            sign(
                alg,
                &Secret::bytes_from_str("another secret"),
                claims_for(json!("1")),
            ),
            "wrong key",
        ),
        (sign(alg, &key, json!({"exp": now() + 600})), "no sub"),
        (
            sign(alg, &key, claims_for(json!("abc"))),
            "sub not a number",
        ),
        (sign(alg, &key, claims_for(json!(0))), "sub zero"),
        (sign(alg, &key, claims_for(json!(-1))), "sub negative"),
        (sign(alg, &key, claims_for(json!(1.5))), "sub fractional"),
        (
            sign(alg, &key, claims_for(json!("9223372036854775808"))),
            "sub too large",
        ),
        (sign(alg, &key, claims_for(json!(null))), "sub null"),
        (
            sign(SignatureAlgorithm::HS512, &key, claims_for(json!("1"))),
            "another HMAC algorithm",
        ),
    ];
    for (token, why) in &cases {
        assert_invalid(&app, token, why).await;
    }
    // A valid token for comparison, and one just past exp inside the leeway.
    assert_ok(&app, &sign(alg, &key, claims_for(json!("1"))), "valid").await;
    assert_ok(&app, &sign(alg, &key, claims_for(json!(1))), "numeric sub").await;
    assert_ok(
        &app,
        &sign(alg, &key, json!({"sub": "1", "exp": now() - 10})),
        "within the 30 s leeway",
    )
    .await;
    // A tampered payload keeps the old signature: refused.
    let valid = sign(alg, &key, claims_for(json!("1")));
    let parts: Vec<&str> = valid.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(claims_for(json!("2")).to_string());
    assert_invalid(
        &app,
        &format!("{}.{forged}.{}", parts[0], parts[2]),
        "tampered",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_checked_when_configured() {
    let app = spawn_app_with(&[
        ("jwt_issuer", json!("https://id.example")),
        ("jwt_audience", json!("connstatus")),
    ])
    .await;
    app.users(&[1, 2]).await;
    let key = hs256(&app);
    let alg = SignatureAlgorithm::HS256;
    let exp = now() + 600;
    let good = json!({"sub": "1", "exp": exp, "iss": "https://id.example", "aud": "connstatus"});
    assert_ok(&app, &sign(alg, &key, good), "right iss and aud").await;
    let in_list = json!({"sub": "1", "exp": exp, "iss": "https://id.example", "aud": ["other", "connstatus"]});
    assert_ok(&app, &sign(alg, &key, in_list), "aud in a list").await;
    for (claims, why) in [
        (
            json!({"sub": "1", "exp": exp, "iss": "https://evil.example", "aud": "connstatus"}),
            "wrong iss",
        ),
        (
            json!({"sub": "1", "exp": exp, "iss": "https://id.example", "aud": "other"}),
            "wrong aud",
        ),
        (
            json!({"sub": "1", "exp": exp, "aud": "connstatus"}),
            "missing iss",
        ),
        (
            json!({"sub": "1", "exp": exp, "iss": "https://id.example"}),
            "missing aud",
        ),
    ] {
        assert_invalid(&app, &sign(alg, &key, claims), why).await;
    }
    // The `token` command mints what this configuration accepts.
    assert_ok(&app, &app.token(1), "minted token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_claim_is_configurable() {
    let app = spawn_app_with(&[("jwt_user_claim", json!("user_id"))]).await;
    app.users(&[1, 2]).await;
    let key = hs256(&app);
    let alg = SignatureAlgorithm::HS256;
    assert_ok(
        &app,
        &sign(alg, &key, json!({"user_id": 1, "exp": now() + 600})),
        "user_id",
    )
    .await;
    assert_invalid(
        &app,
        &sign(alg, &key, json!({"sub": "1", "exp": now() + 600})),
        "sub is not the claim",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_verifies_with_the_public_key_and_refuses_algorithm_confusion() {
    let app = spawn_app_with(&[
        ("jwt_algorithm", json!("RS256")),
        ("jwt_public_key", json!("tests/fixtures/rsa_public.pem")),
    ])
    .await;
    app.users(&[1, 2]).await;
    let private = Secret::rsa_keypair_from_file("tests/fixtures/rsa_private.der").expect("rsa key");
    assert_ok(
        &app,
        &sign(SignatureAlgorithm::RS256, &private, claims_for(json!("1"))),
        "RS256",
    )
    .await;
    // The classic confusion: HS256 keyed with the public key's bytes.
    let pem = std::fs::read("tests/fixtures/rsa_public.pem").expect("pem");
    assert_invalid(
        &app,
        &sign(
            SignatureAlgorithm::HS256,
            &Secret::Bytes(pem),
            claims_for(json!("1")),
        ),
        "HS256 with the PEM",
    )
    .await;
    let der =
        pem::parse(std::fs::read("tests/fixtures/rsa_public.pem").expect("pem")).expect("parse");
    assert_invalid(
        &app,
        &sign(
            SignatureAlgorithm::HS256,
            &Secret::Bytes(der.contents().to_vec()),
            claims_for(json!("1")),
        ),
        "HS256 with the DER",
    )
    .await;
    assert_invalid(
        &app,
        &sign(SignatureAlgorithm::RS256, &private, json!({"sub": "1"})),
        "RS256 without exp",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_verifies_with_the_public_key() {
    let app = spawn_app_with(&[
        ("jwt_algorithm", json!("ES256")),
        ("jwt_public_key", json!("tests/fixtures/ec_public.pem")),
    ])
    .await;
    app.users(&[1, 2]).await;
    let private =
        Secret::ecdsa_keypair_from_file(SignatureAlgorithm::ES256, "tests/fixtures/ec_private.p8")
            .expect("ec key");
    assert_ok(
        &app,
        &sign(SignatureAlgorithm::ES256, &private, claims_for(json!("1"))),
        "ES256",
    )
    .await;
    let rsa = Secret::rsa_keypair_from_file("tests/fixtures/rsa_private.der").expect("rsa key");
    assert_invalid(
        &app,
        &sign(SignatureAlgorithm::RS256, &rsa, claims_for(json!("1"))),
        "RS256 under ES256",
    )
    .await;
    assert_invalid(
        &app,
        &sign(
            SignatureAlgorithm::HS256,
            &Secret::bytes_from_str("x"),
            claims_for(json!("1")),
        ),
        "HS256 under ES256",
    )
    .await;
}
