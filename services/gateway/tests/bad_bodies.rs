//! 100,000 generated bad bodies through the real router: never a panic, never a 5xx, and every
//! refusal is a JSON error naming a field.
//!
//! Bodies are mutations of the real Alertmanager fixtures (byte flips, truncations, splices,
//! JSON values swapped for other types, oversized and invalid UTF-8 values), from a fixed seed so a
//! failure reproduces.

use std::sync::Arc;

use axum::{body::Body, http::Request};
use selfheal_bus::memory::MemoryBus;
use selfheal_config::Secret;
use selfheal_gateway::{AppState, GatewayConfig, app};
use serde_json::Value;
use tower::ServiceExt;

const TOKEN: &str = "s3cr3t-token";
const CASES: usize = 100_000;

/// xorshift64*: small, fast, reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn fixtures() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/alertmanager-0.25");
    let mut bodies: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    bodies.sort();
    assert_eq!(bodies.len(), 6);
    bodies
}

/// Replaces one value somewhere in the tree with something of another shape.
fn mutate_value(value: &mut Value, rng: &mut Rng) {
    let replacement = match rng.below(9) {
        0 => Value::Null,
        1 => Value::from(rng.next() as i64),
        2 => Value::from(-1.5e300),
        3 => Value::from("x".repeat(rng.below(5000))),
        4 => Value::Array(vec![Value::from(1), Value::Null]),
        5 => Value::Object(Default::default()),
        6 => Value::Bool(rng.below(2) == 0),
        7 => Value::from("../../etc/passwd\n\u{0}"),
        _ => Value::from("0001-01-01T00:00:00Z"),
    };
    let depth = rng.below(6);
    *pick(value, depth, rng) = replacement;
}

/// A random node at most `depth` levels down.
fn pick<'a>(value: &'a mut Value, depth: usize, rng: &mut Rng) -> &'a mut Value {
    let children = match value {
        Value::Object(map) => map.len(),
        Value::Array(items) => items.len(),
        _ => 0,
    };
    if depth == 0 || children == 0 {
        return value;
    }
    let index = rng.below(children);
    match value {
        Value::Object(map) => match map.values_mut().nth(index) {
            Some(child) => pick(child, depth - 1, rng),
            None => unreachable!("index below len"),
        },
        Value::Array(items) => pick(&mut items[index], depth - 1, rng),
        _ => unreachable!("checked above"),
    }
}

fn bad_body(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut body = base.to_vec();
    match rng.below(7) {
        0 => {
            for _ in 0..=rng.below(5) {
                let at = rng.below(body.len());
                body[at] = rng.next() as u8;
            }
        }
        1 => body.truncate(rng.below(body.len())),
        2 => {
            let at = rng.below(body.len());
            let junk: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            body.splice(at..at, junk);
        }
        3 | 4 => {
            if let Ok(mut value) = serde_json::from_slice::<Value>(&body) {
                for _ in 0..=rng.below(3) {
                    mutate_value(&mut value, rng);
                }
                body = serde_json::to_vec(&value).unwrap_or_default();
            }
        }
        5 => {
            // Invalid UTF-8 inside a string.
            if let Some(at) = body.windows(9).position(|w| w == b"\"service\"") {
                body.splice(at + 1..at + 1, [0xff, 0xfe]);
            }
        }
        _ => {
            let choices: [&[u8]; 6] = [b"", b"null", b"[]", b"{}", b"{\"alerts\":{}}", b"\"version\""];
            body = choices[rng.below(choices.len())].to_vec();
        }
    }
    body
}

#[tokio::test]
async fn generated_bad_bodies_never_panic_or_5xx() {
    let config = GatewayConfig {
        token: Some(Secret::new(TOKEN)),
        ..Default::default()
    };
    let state = AppState::new(&config, Arc::new(MemoryBus::default()))
        .await
        .expect("state");
    let router = app(state);
    let bases = fixtures();
    let mut rng = Rng(0x5eed_5e1f_bea1_0001);
    let mut statuses = std::collections::BTreeMap::new();
    for case in 0..CASES {
        let body = bad_body(&bases[case % bases.len()], &mut rng);
        let request = Request::post("/v1/alerts/alertmanager")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Body::from(body.clone()))
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        let status = response.status().as_u16();
        *statuses.entry(status).or_insert(0usize) += 1;
        assert!(
            matches!(status, 200 | 400 | 413),
            "case {case}: status {status} for {:?}",
            String::from_utf8_lossy(&body)
        );
        if status == 400 {
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
            let error: Value = serde_json::from_slice(&bytes).expect("a JSON error body");
            assert!(
                error["error"]["field"].as_str().is_some_and(|f| !f.is_empty())
                    && error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
                "case {case}: {error}"
            );
        }
    }
    eprintln!("{CASES} generated bodies: statuses {statuses:?}");
    assert!(
        statuses.get(&400).copied().unwrap_or(0) > CASES / 2,
        "most generated bodies are bad: {statuses:?}"
    );
}
