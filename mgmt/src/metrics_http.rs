//! The metrics endpoint of a daemon: `GET /metrics` over HTTP/1.1 answers
//! the Prometheus text (see [`crate::exposition`]) that a render function
//! produces at each scrape; any other path is 404, any other method 405.
//!
//! Bounds (named below): connections served at once, the request head's
//! size (hyper's read buffer), the time to send it. The request body is
//! never read. Nothing here panics on a request: routing is [`respond`],
//! a pure function, and hyper parses the bytes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::exposition;

/// Scrapes served at once; further connections wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head (request line and headers) read; hyper's minimum.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8192;
/// A client must send its request head within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The only path served.
pub const PATH: &str = "/metrics";

/// Renders the metrics text at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Why the endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsHttpError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds `addr` (at start, so that a port conflict shows at once).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsHttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsHttpError::Listen { addr, source })
}

/// The answer to a request for `path` with `method`.
pub fn respond(method: &Method, path: &str, render: &Render) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    };
    if path != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    // For HEAD too: hyper sends the headers (Content-Length included) and
    // drops the body.
    let mut response = Response::new(Full::new(Bytes::from(render())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(exposition::CONTENT_TYPE),
    );
    response
}

/// Serves the endpoint on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    tracing::info!(metrics = ?listener.local_addr().ok(), "metrics endpoint serving");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    loop {
        let acquired = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => permit,
        };
        let Ok(permit) = acquired else {
            break;
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let render = Arc::clone(&render);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = respond(request.method(), request.uri().path(), &render);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "metrics connection ended");
            }
            drop(permit);
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn render() -> Render {
        Arc::new(|| "# TYPE up gauge\nup 1\n".to_owned())
    }

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn get_metrics_answers_the_text_with_the_0_0_4_content_type() {
        let response = respond(&Method::GET, "/metrics", &render());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(body(response).await, "# TYPE up gauge\nup 1\n");
    }

    #[test]
    fn other_paths_are_404_and_other_methods_405() {
        assert_eq!(
            respond(&Method::GET, "/", &render()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::GET, "/metrics/x", &render()).status(),
            StatusCode::NOT_FOUND
        );
        let post = respond(&Method::POST, "/metrics", &render());
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_scrapes_over_tcp_and_survives_garbage_and_oversized_heads() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, render(), shutdown.clone()));

        let ok = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("up 1\n"), "{ok}");

        let garbage = exchange(addr, b"\x00\x01 not http at all\r\n\r\n").await;
        assert!(
            garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
            "{garbage}"
        );

        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 4 * MAX_REQUEST_HEAD_BYTES));
        huge.extend_from_slice(b"\r\n\r\n");
        let refused = exchange(addr, &huge).await;
        assert!(!refused.contains("up 1"), "an oversized head was served");

        let head = exchange(
            addr,
            b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("content-length: 21"),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"), "HEAD answered a body: {head}");

        let missing = exchange(
            addr,
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

        shutdown.cancel();
        server.await.unwrap();
    }
}
