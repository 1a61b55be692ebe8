//! `usage-gateway demo`: the README's first command works end to end.
#![cfg(feature = "demo")] // the default; without it there is no demo to test

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use usage_gateway::demo::Demo;

#[tokio::test]
async fn the_demo_serves_usage_through_the_gateway_and_prints_working_commands() {
    let demo = Demo::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("the demo starts");
    let instructions = demo.instructions();
    assert!(instructions.contains(&demo.gateway_addr().to_string()));
    assert!(instructions.contains(demo.caller_key()));
    assert!(instructions.contains("curl"));

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = http::Request::get(format!("http://{}/usage?limit=2", demo.gateway_addr()))
        .header("authorization", format!("Bearer {}", demo.caller_key()))
        .body(Empty::new())
        .expect("request");
    let response = client.request(request).await.expect("the gateway answers");
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(json["usage"].as_array().map(Vec::len), Some(2), "{json}");
    demo.stop().await;
}
