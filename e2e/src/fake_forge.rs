//! What the fake forges (`fake_gitlab`, `fake_gitea`) share: injected faults, a request held
//! unanswered (and not carried out) until released — the window a crash falls in — and small
//! helpers for answers and paths.

use std::sync::Arc;

use axum::{
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// A fault for the next `remaining` requests whose method is `method` and whose path ends with
/// `path_ends`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub method: Method,
    pub path_ends: &'static str,
    /// 0: hold the request unanswered (and not carried out) until released.
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub remaining: u32,
}

/// The faults of one fake, and how many requests were held.
#[derive(Default)]
pub struct Faults {
    pub list: Vec<Fault>,
    pub held: usize,
}

/// Marks a response that must not be sent until released.
#[derive(Clone, Copy)]
struct Hold;

impl Faults {
    pub fn add(
        &mut self,
        method: Method,
        path_ends: &'static str,
        status: u16,
        headers: &[(&'static str, &str)],
        times: u32,
    ) {
        self.list.push(Fault {
            method,
            path_ends,
            status,
            headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            remaining: times,
        });
    }

    /// The injected answer to `method path`, if a fault applies.
    pub fn answer(&mut self, method: &Method, path: &str) -> Option<Response> {
        let fault = self
            .list
            .iter_mut()
            .find(|f| f.remaining > 0 && f.method == *method && path.ends_with(f.path_ends))?;
        fault.remaining -= 1;
        if fault.status == 0 {
            self.held += 1;
            let mut held = message(502, "held");
            held.extensions_mut().insert(Hold);
            return Some(held);
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &fault.headers {
            if let Ok(value) = value.parse() {
                headers.insert(*name, value);
            }
        }
        let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Some((status, headers, "Retry later\n").into_response())
    }
}

/// Sends `response`, or — when it is a held one — waits for a release first and answers 502.
pub async fn finish(response: Response, release: &Arc<tokio::sync::Semaphore>) -> Response {
    if response.extensions().get::<Hold>().is_some() {
        // A permit, once added, stays: a release before this line is not lost.
        if let Ok(permit) = release.acquire().await {
            permit.forget();
        }
        return message(502, "held, then released");
    }
    response
}

pub fn answer(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

pub fn message(status: u16, text: &str) -> Response {
    answer(status, json!({ "message": text }))
}

/// A percent-encoded path segment, decoded.
pub fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&segment[i + 1..i + 3], 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `name` in a parsed query.
pub fn query_value<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}
