//! A scripted Kubernetes API server for tests: a `tower::Service` that
//! checks each request against the next expected exchange (method, path,
//! query parameters, body fields) and answers with a recorded response from
//! `testdata/`. Mismatches are collected, not panicked on (the client runs
//! the service in a background task, where a panic would only show up as a
//! closed connection), and [`Script::finish`] reports them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::Value;

/// Checks a request body; returns what is wrong with it, if anything.
pub type BodyCheck = Box<dyn Fn(&Value) -> Result<(), String> + Send>;

/// One request the client must make, and the answer it gets.
pub struct Exchange {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    content_type: Option<String>,
    body: Option<BodyCheck>,
    status: StatusCode,
    response: String,
}

impl Exchange {
    pub fn new(method: Method, path: &str, status: u16, response: &str) -> Self {
        Self {
            method,
            path: path.to_owned(),
            query: Vec::new(),
            content_type: None,
            body: None,
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            response: response.to_owned(),
        }
    }

    /// The request's query must hold `key=value`.
    pub fn query(mut self, key: &str, value: &str) -> Self {
        self.query.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The request's Content-Type must be `value`.
    pub fn content_type(mut self, value: &str) -> Self {
        self.content_type = Some(value.to_owned());
        self
    }

    /// The request's JSON body must pass `check`.
    pub fn body(mut self, check: impl Fn(&Value) -> Result<(), String> + Send + 'static) -> Self {
        self.body = Some(Box::new(check));
        self
    }
}

#[derive(Default)]
struct State {
    expected: VecDeque<Exchange>,
    seen: Vec<String>,
    bodies: Vec<Value>,
    errors: Vec<String>,
}

/// The script and what happened; clone it into the client.
#[derive(Clone, Default)]
pub struct Script(Arc<Mutex<State>>);

impl Script {
    pub fn new(exchanges: impl IntoIterator<Item = Exchange>) -> Self {
        let script = Self::default();
        script.lock().expected.extend(exchanges);
        script
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A client whose every request goes to this script.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    /// The JSON bodies of the requests made so far, in order.
    pub fn bodies(&self) -> Vec<Value> {
        self.lock().bodies.clone()
    }

    /// Fails if a request did not match or an expected one was not made.
    pub fn finish(&self) -> Result<(), String> {
        let state = self.lock();
        let mut errors = state.errors.clone();
        for left in &state.expected {
            errors.push(format!(
                "expected {} {} was not made",
                left.method, left.path
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}\nrequests made:\n  {}",
                errors.join("\n"),
                state.seen.join("\n  ")
            ))
        }
    }

    fn answer(&self, parts: &http::request::Parts, body: &[u8]) -> (StatusCode, String) {
        let (method, uri) = (&parts.method, &parts.uri);
        let mut state = self.lock();
        let path = uri.path().to_owned();
        state.seen.push(format!("{method} {uri}"));
        let Some(expected) = state.expected.pop_front() else {
            state.errors.push(format!("unexpected {method} {uri}"));
            return (StatusCode::INTERNAL_SERVER_ERROR, String::new());
        };
        let mut wrong = Vec::new();
        if *method != expected.method || path != expected.path {
            wrong.push(format!(
                "got {method} {path}, expected {} {}",
                expected.method, expected.path
            ));
        }
        let query: Vec<(String, String)> = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        for pair in &expected.query {
            if !query.contains(pair) {
                wrong.push(format!("{method} {uri}: query lacks {}={}", pair.0, pair.1));
            }
        }
        if let Some(want) = &expected.content_type {
            let got = parts.headers.get(http::header::CONTENT_TYPE);
            if got.and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
                wrong.push(format!(
                    "{method} {path}: content-type {got:?}, expected {want}"
                ));
            }
        }
        let parsed = serde_json::from_slice::<Value>(body);
        if let Ok(value) = &parsed {
            state.bodies.push(value.clone());
        }
        if let Some(check) = &expected.body {
            match &parsed {
                Ok(value) => {
                    if let Err(e) = check(value) {
                        wrong.push(format!("{method} {path}: body: {e}"));
                    }
                }
                Err(e) => wrong.push(format!("{method} {path}: body is not JSON: {e}")),
            }
        }
        state.errors.extend(wrong);
        (expected.status, expected.response)
    }
}

impl tower_service::Service<Request<Body>> for Script {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let script = self.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.unwrap_or_default();
            let (status, text) = script.answer(&parts, &body);
            let mut response = Response::new(Body::from(text.into_bytes()));
            *response.status_mut() = status;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            Ok(response)
        })
    }
}
