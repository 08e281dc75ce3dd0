//! Criterion benchmarks of the pure pieces on the request path: id parsing,
//! key building, the cache value codec, and token verification per algorithm.
//! Run: `cargo bench --bench pieces`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use biscuit::jwa::SignatureAlgorithm;
use biscuit::jws::{Compact, Header, RegisteredHeader, Secret};
use biscuit::{CompactJson, Empty};
use connstatus::auth::Verifier;
use connstatus::cache::codec::{self, Keys};
use connstatus::config::Settings;
use connstatus::domain::{Pair, Relation, Side, UserId, Versioned};
use criterion::{criterion_group, criterion_main, Criterion};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct Raw(Value);
impl CompactJson for Raw {}

fn sign(algorithm: SignatureAlgorithm, secret: &Secret) -> String {
    let header = Header::<Empty>::from_registered_header(RegisteredHeader {
        algorithm,
        ..RegisteredHeader::default()
    });
    let exp = chrono::Utc::now().timestamp() + 3600;
    Compact::new_decoded(header, Raw(json!({"sub": "12345", "exp": exp})))
        .encode(secret)
        .unwrap()
        .encoded()
        .unwrap()
        .encode()
}

fn verifier(overrides: &[(&str, &str)]) -> Verifier {
    let mut figment = Settings::figment("config", "bench");
    for (k, v) in overrides {
        figment = figment.merge((*k, *v));
    }
    Verifier::from_settings(&Settings::from_figment(figment).unwrap().jwt).unwrap()
}

fn ids_and_keys(c: &mut Criterion) {
    c.bench_function("parse id (19 digits)", |b| {
        b.iter(|| UserId::parse(black_box("9223372036854775807")))
    });
    c.bench_function("parse id (bad)", |b| {
        b.iter(|| UserId::parse(black_box("12a4")))
    });
    let keys = Keys::new("cs:3:");
    let pair = Pair::new(
        UserId::new(123_456).unwrap(),
        UserId::new(98_765_432).unwrap(),
    )
    .unwrap();
    c.bench_function("pair copy", |b| {
        b.iter(|| keys.seen_by(black_box(pair), black_box(pair.low())))
    });
    let user = UserId::new(98_765_432).unwrap();
    c.bench_function("presence spot", |b| {
        b.iter(|| keys.presence(black_box(user)))
    });
}

fn value_codec(c: &mut Criterion) {
    let value = Versioned {
        version: 1_234_567,
        value: Relation::Pending {
            by: Side::High,
            rejected: true,
        },
    };
    c.bench_function("encode value", |b| {
        b.iter(|| codec::encode(black_box(value)))
    });
    let raw = codec::encode(value);
    c.bench_function("decode value", |b| {
        b.iter(|| codec::decode::<Relation>(black_box(&raw)))
    });
}

fn tokens(c: &mut Criterion) {
    let hs = verifier(&[]);
    let secret = Secret::Bytes(connstatus::config::DEV_JWT_SECRET.as_bytes().to_vec());
    let token = sign(SignatureAlgorithm::HS256, &secret);
    assert!(hs.verify(&token).is_ok());
    c.bench_function("verify HS256", |b| b.iter(|| hs.verify(black_box(&token))));

    let rs = verifier(&[
        ("jwt_algorithm", "RS256"),
        ("jwt_public_key", "tests/fixtures/rsa_public.pem"),
    ]);
    let key = Secret::rsa_keypair_from_file("tests/fixtures/rsa_private.der").unwrap();
    let token = sign(SignatureAlgorithm::RS256, &key);
    assert!(rs.verify(&token).is_ok());
    c.bench_function("verify RS256", |b| b.iter(|| rs.verify(black_box(&token))));

    let es = verifier(&[
        ("jwt_algorithm", "ES256"),
        ("jwt_public_key", "tests/fixtures/ec_public.pem"),
    ]);
    let key =
        Secret::ecdsa_keypair_from_file(SignatureAlgorithm::ES256, "tests/fixtures/ec_private.p8")
            .unwrap();
    let token = sign(SignatureAlgorithm::ES256, &key);
    assert!(es.verify(&token).is_ok());
    c.bench_function("verify ES256", |b| b.iter(|| es.verify(black_box(&token))));
}

criterion_group! {
    name = pieces;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = ids_and_keys, value_codec, tokens
}
criterion_main!(pieces);
