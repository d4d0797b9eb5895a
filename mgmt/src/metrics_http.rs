//! The metrics endpoint of a daemon: `GET /metrics` over HTTP/1.1 answers
//! the Prometheus text (see [`crate::exposition`]) that a render function
//! produces at each scrape; any other path is 404, any other method 405.
//!
//! Bounds (named below): connections served at once
//! ([`MAX_CONNECTIONS`]), the request head's size
//! ([`MAX_REQUEST_HEAD_BYTES`], hyper's read buffer), the time to send it
//! ([`HEAD_TIMEOUT`], which also closes an idle kept-alive connection),
//! and a connection's whole life ([`CONNECTION_TIMEOUT`]). Each
//! connection is its own task, so a slow client never holds up another;
//! when every slot is taken, the oldest connection is closed to make room
//! for the new one (a scraper sends its head within a round trip, so the
//! oldest is a stalled client, not a scrape). The request body is never
//! read. Nothing here panics on a request: routing is [`respond`], a pure
//! function, and hyper parses the bytes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::exposition;

/// Connections served at once. A daemon is scraped by one or two
/// Prometheus servers (and the odd `curl`), so 64 leaves ample room while
/// bounding the tasks and sockets a flood can make the daemon hold. A
/// connection beyond it closes the oldest one (module doc).
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head (request line and headers) read; hyper's minimum.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8192;
/// A client must send its whole request head within this (from the
/// connection's start, or from the previous answer on a kept-alive one):
/// a scraper sends it at once, so a client that has not is stalled and
/// loses its slot.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection is closed this long after it was accepted, whatever it is
/// doing: bounds a client that sent its head in time but reads the answer
/// slowly (or never). A scrape takes milliseconds.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (out of file descriptors), so the accept
/// loop does not spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// On shutdown, connections get this long to end.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
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

/// The connections being served, oldest first (ids grow with each
/// accept), each with the token that closes it.
#[derive(Default)]
struct Live {
    next_id: u64,
    connections: BTreeMap<u64, CancellationToken>,
}

impl Live {
    fn lock(live: &Mutex<Live>) -> std::sync::MutexGuard<'_, Live> {
        // The lock guards plain map updates that cannot leave it half-made.
        live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves the endpoint on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    tracing::info!(metrics = ?listener.local_addr().ok(), "metrics endpoint serving");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let live = Arc::new(Mutex::new(Live::default()));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => {
                // Every slot is taken: the oldest connection makes room
                // (it gives its slot back as soon as its task sees this).
                let oldest = Live::lock(&live).connections.pop_first();
                if let Some((_, close)) = oldest {
                    tracing::debug!(%peer, "metrics: connection limit reached; closing the oldest");
                    close.cancel();
                }
                let acquired = tokio::select! {
                    () = shutdown.cancelled() => break,
                    permit = Arc::clone(&slots).acquire_owned() => permit,
                };
                let Ok(permit) = acquired else {
                    break;
                };
                permit
            }
        };
        let close = CancellationToken::new();
        let id = {
            let mut live = Live::lock(&live);
            let id = live.next_id;
            live.next_id += 1;
            live.connections.insert(id, close.clone());
            id
        };
        let render = Arc::clone(&render);
        let shutdown = shutdown.clone();
        let live = Arc::clone(&live);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = respond(request.method(), request.uri().path(), &render);
                async move { Ok::<_, Infallible>(response) }
            });
            let mut connection = Box::pin(
                hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .max_buf_size(MAX_REQUEST_HEAD_BYTES)
                    .serve_connection(TokioIo::new(stream), service),
            );
            let ended = tokio::select! {
                result = connection.as_mut() => result.map_err(|e| e.to_string()),
                () = close.cancelled() => Err("closed to make room for a new connection".into()),
                () = tokio::time::sleep(CONNECTION_TIMEOUT) => {
                    Err(format!("still open after {CONNECTION_TIMEOUT:?}"))
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await {
                        Ok(result) => result.map_err(|e| e.to_string()),
                        Err(_) => Err("shutting down".into()),
                    }
                }
            };
            // Dropping the connection closes the socket.
            drop(connection);
            Live::lock(&live).connections.remove(&id);
            if let Err(reason) = ended {
                tracing::debug!(%peer, %reason, "metrics connection ended");
            }
            drop(permit);
        });
    }
    connections.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connections.wait()).await;
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

    const SCRAPE: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    /// Half a request head: the request line and one header, no blank line.
    const HALF_HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n";
    /// A generous bound on waits that must end (never a timing assertion).
    const WAIT: Duration = Duration::from_secs(30);

    async fn stall(addr: SocketAddr, count: usize) -> Vec<tokio::net::TcpStream> {
        let mut stalled = Vec::with_capacity(count);
        for _ in 0..count {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(HALF_HEAD).await.unwrap();
            stalled.push(stream);
        }
        stalled
    }

    /// Whether the server has not closed `stream` (nothing to read, no
    /// end), asked of the socket itself: tokio's `try_read` answers from
    /// readiness the reactor may not have seen yet.
    fn still_open(stream: tokio::net::TcpStream) -> (bool, tokio::net::TcpStream) {
        use std::io::Read;
        let mut socket = stream.into_std().unwrap();
        let mut buf = [0u8; 64];
        // Still non-blocking, as tokio left it.
        let open =
            matches!(socket.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        (open, tokio::net::TcpStream::from_std(socket).unwrap())
    }

    /// How many of `streams` are still open (see [`still_open`]).
    fn count_open(streams: Vec<tokio::net::TcpStream>) -> (usize, Vec<tokio::net::TcpStream>) {
        let mut open = 0;
        let streams = streams
            .into_iter()
            .map(|s| {
                let (is_open, s) = still_open(s);
                open += usize::from(is_open);
                s
            })
            .collect();
        (open, streams)
    }

    /// Waits for the server to close `stream`; what it sent before (if
    /// anything) must not be the metrics.
    async fn closed(mut stream: tokio::net::TcpStream) {
        let mut out = Vec::new();
        match tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Err(_) => panic!("a stalled connection was still open after {WAIT:?}"),
        }
        assert!(!String::from_utf8_lossy(&out).contains("up 1"));
    }

    async fn scrape(addr: SocketAddr) -> String {
        tokio::time::timeout(WAIT, exchange(addr, SCRAPE))
            .await
            .expect("the scrape was answered")
    }

    #[tokio::test]
    async fn stalled_heads_neither_hold_up_a_scrape_nor_outlive_the_head_timeout() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, render(), shutdown.clone()));

        let stalled = stall(addr, 40).await;
        let ok = scrape(addr).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("# TYPE up gauge\nup 1\n"), "{ok}");
        // Answered while every stalled client still held its connection:
        // it did not wait for them to be timed out.
        let (open, stalled) = count_open(stalled);
        assert_eq!(open, 40, "the scrape waited for stalled clients");
        // Each is closed once its head is overdue.
        for stream in stalled {
            closed(stream).await;
        }
        // And the endpoint still serves.
        assert!(scrape(addr).await.ends_with("up 1\n"));

        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn at_the_connection_limit_a_scrape_closes_the_oldest_connection() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, render(), shutdown.clone()));

        let mut stalled = stall(addr, MAX_CONNECTIONS).await;
        let ok = scrape(addr).await;
        assert!(ok.ends_with("up 1\n"), "{ok}");
        // The oldest made room; every other is still open (the scrape did
        // not wait for the head timeout to free a slot).
        let others = stalled.split_off(1);
        let (open, others) = count_open(others);
        assert_eq!(open, MAX_CONNECTIONS - 1);
        closed(stalled.remove(0)).await;
        for stream in others {
            closed(stream).await;
        }

        shutdown.cancel();
        server.await.unwrap();
    }
}
