//! Fuzzing with proptest, in CI (the coverage-guided cargo fuzz targets in
//! `fuzz/` run longer, by `reliability/fuzz`): the token parser, the config parser, the payment
//! notice parser and the operators' drop JSON take arbitrary and mangled
//! input without panicking and accept nothing they should not; reserve
//! bodies of arbitrary bytes and JSON get a 4xx or a win from a live server,
//! never a 5xx, and never more units than the stock.

use jiff::Timestamp;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use dropgate::auth::TokenVerifier;
use dropgate::config::{drop_from_json, Config, SecretSource};
use dropgate::payment::parse_notice;

use crate::support::*;

/// `cases` per run in CI; `FUZZ_SCALE=100 cargo nextest run fuzz` runs a
/// hundred times as many, for a longer bounded campaign.
fn runner(cases: u32) -> TestRunner {
    let scale: u32 = std::env::var("FUZZ_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    TestRunner::new(ProptestConfig {
        cases: cases.saturating_mul(scale),
        ..ProptestConfig::default()
    })
}

/// Text made of the pieces these formats are built from, so that mangled
/// input gets past the first byte often.
fn tokenish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just(".".to_owned()),
            Just("=".to_owned()),
            Just("\"".to_owned()),
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just("\n".to_owned()),
            Just("eyJ".to_owned()),
            "[A-Za-z0-9_-]{1,12}",
            any::<String>(),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

#[test]
fn no_made_up_or_mangled_token_is_accepted() {
    let verifier = TokenVerifier::new(JWT_SECRET);
    let valid = token("alice");
    let mut made_up = runner(20_000);
    made_up
        .run(&tokenish(), |text| {
            let header = format!("Bearer {text}");
            prop_assert!(verifier.verify(Some(&header)).is_err() || text.trim() == valid);
            prop_assert!(verifier.verify(Some(&text)).is_err());
            Ok(())
        })
        .unwrap();
    // One byte of a valid token changed: refused, whichever byte it is.
    let mut mangled_runner = runner(20_000);
    mangled_runner
        .run(&(0..valid.len(), 1u8..=255), |(at, flip)| {
            // XOR with a non-zero byte: always a different byte, no rejects.
            let mut mangled = valid.clone().into_bytes();
            mangled[at] ^= flip;
            let Ok(mangled) = String::from_utf8(mangled) else {
                return Ok(());
            };
            let header = format!("Bearer {mangled}");
            prop_assert!(verifier.verify(Some(&header)).is_err(), "{mangled}");
            Ok(())
        })
        .unwrap();
    assert!(verifier.verify(Some(&format!("Bearer {valid}"))).is_ok());
}

/// Config text mixing real keys, sections and values with noise.
fn configish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("[[drops]]\n".to_owned()),
            Just("[[drops.skus]]\n".to_owned()),
            Just("[limits]\n".to_owned()),
            Just("[server]\n".to_owned()),
            Just("[auth]\n".to_owned()),
            Just("jwt_secret = \"s\"\n".to_owned()),
            Just("id = \"d\"\n".to_owned()),
            Just("stock = 5\n".to_owned()),
            Just("price = \"1999.00\"\n".to_owned()),
            Just("opens_at = \"2026-11-27T10:00:00Z\"\n".to_owned()),
            Just("closes_at = \"2026-11-27T09:00:00Z\"\n".to_owned()),
            Just("pay_within = \"0s\"\n".to_owned()),
            Just("per_user_limit = -1\n".to_owned()),
            Just("global_rps = 0\n".to_owned()),
            Just(
                "schedule = { days = [\"Mon\"], at = \"25:00\", tz = \"Asia/Shanghai\" }\n"
                    .to_owned()
            ),
            "[a-z_]{1,12} = [0-9\"-]{0,8}\n",
            any::<String>(),
        ],
        0..20,
    )
    .prop_map(|parts| parts.concat())
}

#[test]
fn arbitrary_config_files_are_refused_or_read_never_a_panic() {
    let mut runner = runner(20_000);
    runner
        .run(&configish(), |text| {
            let _ = Config::from_toml(&text, SecretSource::Environment);
            Ok(())
        })
        .unwrap();
}

#[test]
fn arbitrary_payment_notices_and_drop_definitions_never_panic() {
    let mut runner = runner(20_000);
    runner
        .run(&(tokenish(), any::<Vec<u8>>()), |(text, bytes)| {
            let _ = parse_notice(text.as_bytes());
            let _ = parse_notice(&bytes);
            let _ = drop_from_json(text.as_bytes());
            let _ = drop_from_json(&bytes);
            Ok(())
        })
        .unwrap();
}

/// Reserve bodies: raw bytes, arbitrary JSON, and near-valid requests.
fn reserve_bodies() -> impl Strategy<Value = Vec<u8>> {
    let json_value = any::<i64>()
        .prop_map(|n| n.to_string())
        .boxed()
        .prop_union("[a-z0-9\"{}\\[\\],:. -]{0,40}".boxed())
        .or(Just("null".to_owned()).boxed())
        .or(Just("\"sku\"".to_owned()).boxed())
        .or(Just("1e309".to_owned()).boxed());
    prop_oneof![
        any::<Vec<u8>>(),
        tokenish().prop_map(String::into_bytes),
        (json_value.clone(), json_value).prop_map(|(sku, quantity)| format!(
            r#"{{"sku": {sku}, "quantity": {quantity}}}"#
        )
        .into_bytes()),
        (0i64..5).prop_map(
            |quantity| format!(r#"{{"sku": "sku", "quantity": {quantity}}}"#).into_bytes()
        ),
    ]
}

#[test]
fn arbitrary_reserve_bodies_get_a_4xx_or_a_win_never_a_5xx() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let now = Timestamp::now();
    let config = config_head("") + &window_drop("fz", "sku", 50, 2, now - hours(1), now + hours(1));
    let server = runtime.block_on(TestServer::start_with_clock(&config, now));
    let users = std::sync::atomic::AtomicU64::new(0);
    let mut runner = runner(3000);
    runner
        .run(&reserve_bodies(), |body| {
            let user = users.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let auth = format!("Bearer {}", token(&format!("fz{user}")));
            let reply = runtime.block_on(server.http.send(
                hyper::Method::POST,
                "/api/v1/drops/fz/reserve",
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                body.clone(),
            ));
            prop_assert!(
                matches!(reply.status, 201 | 400 | 409 | 413 | 422),
                "{} {:?} for {:?}",
                reply.status,
                reply.body,
                String::from_utf8_lossy(&body)
            );
            if reply.status != 201 {
                prop_assert!(
                    reply.body["error"].is_string(),
                    "a JSON error: {:?}",
                    reply.body
                );
            }
            Ok(())
        })
        .unwrap();
    assert!(
        live_units(&server.db(), "fz@%") <= 50,
        "never more than the stock"
    );
    assert_eq!(
        runtime.block_on(server.http.get("/healthz", None)).status,
        200
    );
}
