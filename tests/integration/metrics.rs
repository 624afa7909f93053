//! `/metrics` in Prometheus text format: every metric the README lists is
//! there after a little traffic, with values that match what happened.

use jiff::Timestamp;

use crate::support::*;

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_outcomes_and_show_stock_and_queues() {
    let now = Timestamp::now();
    let config = config_head_with_limits(
        "per_user_rps = 1\nper_user_burst = 2\nper_ip_rps = 100000\nper_ip_burst = 100000",
        "",
    ) + &window_drop("met", "sku", 2, 1, now - hours(1), now + hours(1));
    let s = TestServer::start_with_clock(&config, now).await;
    assert_eq!(s.http.reserve("met", "sku", 1, "a").await.status, 201);
    assert_eq!(
        s.http.reserve("met", "sku", 1, "a").await.error(),
        "limit_exceeded"
    );
    assert_eq!(
        s.http.reserve("met", "sku", 1, "a").await.error(),
        "rate_limited"
    );
    assert_eq!(s.http.reserve("met", "sku", 1, "b").await.status, 201);
    assert_eq!(
        s.http.reserve("met", "sku", 1, "c").await.error(),
        "sold_out"
    );
    assert_eq!(
        s.http.reserve("met", "sku", 1, "d").await.error(),
        "sold_out"
    );
    assert_eq!(
        s.http
            .post("/api/v1/drops/met/reserve", Some(&token("e")), "{")
            .await
            .status,
        400
    );

    let reply = s
        .http
        .send(hyper::Method::GET, "/metrics", &[], Vec::new())
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    // The body is not JSON; fetch it raw.
    let text = raw_metrics(&s).await;
    let count = |outcome: &str| {
        sample(
            &text,
            &format!(r#"dropgate_requests_total{{endpoint="reserve",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(count("won"), Some(2.0));
    assert_eq!(count("limit_exceeded"), Some(1.0));
    assert_eq!(count("rate_limited_user"), Some(1.0));
    assert_eq!(count("sold_out"), Some(2.0));
    assert_eq!(count("invalid"), Some(1.0));
    assert_eq!(
        sample(&text, r#"dropgate_stock_remaining{drop="met",sku="sku"}"#),
        Some(0.0)
    );
    assert_eq!(sample(&text, "dropgate_engine_in_flight"), Some(0.0));
    assert!(sample(&text, "dropgate_open_connections").unwrap() >= 1.0);
    assert_eq!(sample(&text, "dropgate_order_writer_lag"), Some(0.0));
    assert_eq!(
        sample(&text, r#"dropgate_limiter_keys{layer="user"}"#),
        Some(5.0)
    );
    // Only the first sold-out reached the engine: the second met the mark.
    assert_eq!(
        sample(
            &text,
            r#"dropgate_engine_call_duration_seconds_count{call="reserve"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"dropgate_request_duration_seconds_count{endpoint="reserve"}"#
        ),
        Some(7.0)
    );
    assert!(sample(
        &text,
        r#"dropgate_request_duration_seconds_bucket{endpoint="reserve",le="+Inf"}"#
    )
    .is_some());
    assert!(sample(&text, "dropgate_order_writer_batch_size_count").unwrap() >= 2.0);
}

async fn raw_metrics(s: &TestServer) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let res = client
        .get(format!("http://{}/metrics", s.addr).parse().unwrap())
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}
