//! The HTTP endpoint: `GET /metrics` (Prometheus text) and `GET /healthz`.
//!
//! The loader runs as root, so any local user must not be able to stall it
//! or make it grow: connections are capped, headers must arrive within a few
//! seconds and fit in 8 KiB, bodies are never read, and when the cap is
//! reached the oldest connection that is not being answered makes room, so
//! a crowd of idle connections cannot lock Prometheus out. A connection is
//! being answered from its request's arrival until the whole answer has been
//! handed to the socket (a large scrape to a slow reader takes a while);
//! one stuck there longer than [`WRITE_TIMEOUT`] may be evicted too, so a
//! crowd of readers that never read cannot lock it out either.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Notify,
};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A request's headers must be complete this long after it starts.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted (hyper's minimum buffer size).
pub const MAX_HEAD_BYTES: usize = 8192;
/// An answer still not handed to the socket after this long (its reader
/// does not read) no longer protects its connection from eviction.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Produces the exposition text for one scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Whether a connection is answering a request, shared by its service
/// (which starts the answer) and its socket (which sees it written).
#[derive(Default)]
struct Answering {
    /// Milliseconds since [`epoch`] (plus one) when the request arrived;
    /// 0 while idle.
    since_ms: AtomicU64,
    /// The service has produced the answer: the next completed flush means
    /// it is all on the socket.
    produced: AtomicBool,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

impl Answering {
    fn start(&self) {
        self.produced.store(false, Ordering::Relaxed);
        self.since_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// How long it has been answering, `None` while idle.
    fn for_ms(&self) -> Option<u64> {
        match self.since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(now_ms().saturating_sub(since)),
        }
    }

    /// A flush completed: hyper flushes once it has written everything it
    /// holds, so after the answer was produced the connection is idle again.
    fn flushed(&self) {
        if self.produced.swap(false, Ordering::Relaxed) {
            self.since_ms.store(0, Ordering::Relaxed);
        }
    }
}

/// The socket, telling its connection's [`Answering`] when a flush completes.
struct Watched {
    io: TokioIo<TcpStream>,
    answering: Arc<Answering>,
}

impl hyper::rt::Read for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.answering.flushed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

struct Connection {
    answering: Arc<Answering>,
    evict: Arc<Notify>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    /// By arrival: the first idle one is the oldest.
    open: BTreeMap<u64, Connection>,
}

impl Registry {
    /// The connection to evict at the cap: the oldest idle one, else the one
    /// answering longest if that is past [`WRITE_TIMEOUT`].
    fn victim(&self) -> Option<u64> {
        let idle = self
            .open
            .iter()
            .find(|(_, c)| c.answering.for_ms().is_none())
            .map(|(&id, _)| id);
        let limit = u64::try_from(WRITE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
        idle.or_else(|| {
            self.open
                .iter()
                .filter_map(|(&id, c)| Some((id, c.answering.for_ms()?)))
                .filter(|&(_, ms)| ms > limit)
                .max_by_key(|&(_, ms)| ms)
                .map(|(id, _)| id)
        })
    }

    /// Admits a connection, evicting one at the cap ([`Registry::victim`]);
    /// `None` when every slot is busy answering.
    fn admit(&mut self) -> Option<(u64, Arc<Answering>, Arc<Notify>)> {
        if self.open.len() >= MAX_CONNECTIONS {
            let victim = self.victim()?;
            if let Some(c) = self.open.remove(&victim) {
                c.evict.notify_one();
            }
        }
        let id = self.next;
        self.next += 1;
        let answering = Arc::new(Answering::default());
        let evict = Arc::new(Notify::new());
        self.open.insert(
            id,
            Connection {
                answering: answering.clone(),
                evict: evict.clone(),
            },
        );
        Some((id, answering, evict))
    }
}

/// Binds `listen` now, so a bad address fails before anything is attached.
///
/// # Errors
/// If the address cannot be bound.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener> {
    // A loader taken over releases its lock before its runtime, and with it
    // the listening socket, is gone: wait that out, briefly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(listen).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            result => {
                return result
                    .with_context(|| format!("serving metrics on {listen} (metrics.listen)"));
            }
        }
    }
}

/// Serves until the runtime ends.
pub async fn serve(listener: TcpListener, render: Render) {
    let registry = Arc::new(Mutex::new(Registry::default()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or the like: breathe, then go on.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let admitted = registry.lock().ok().and_then(|mut r| r.admit());
        let Some((id, answering, evict)) = admitted else {
            continue; // Every slot is answering a request: drop this one.
        };
        let render = render.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let io = Watched {
                io: TokioIo::new(stream),
                answering: answering.clone(),
            };
            let service = service_fn(move |req: Request<Incoming>| {
                let render = render.clone();
                let answering = answering.clone();
                async move {
                    answering.start();
                    let response = answer(&req, &render);
                    answering.produced.store(true, Ordering::Relaxed);
                    Ok::<_, Infallible>(response)
                }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .max_headers(64);
            let connection = builder.serve_connection(io, service);
            tokio::select! {
                _ = connection => {}
                () = evict.notified() => {}
            }
            if let Ok(mut r) = registry.lock() {
                r.open.remove(&id);
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn answer(req: &Request<Incoming>, render: &Render) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "ovpn-lb: metrics are at /metrics\n"),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Prometheus asks for a scrape larger than the socket buffers and reads
    /// it slowly while a crowd of idle connections fills every slot: the
    /// crowd makes room among itself, and the scrape arrives whole.
    #[tokio::test]
    async fn a_scrape_being_written_is_not_evicted() {
        const BODY: usize = 16 << 20;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = "x".repeat(BODY);
        tokio::spawn(serve(listener, Arc::new(move || body.clone())));
        let mut scraper = TcpStream::connect(addr).await.unwrap();
        scraper
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Its answer fills the socket buffers and waits.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut crowd = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 8 {
            crowd.push(TcpStream::connect(addr).await.unwrap());
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = scraper.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let head = got.windows(4).position(|w| w == b"\r\n\r\n");
                if head.is_some_and(|h| got.len() >= h + 4 + BODY) {
                    break;
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the scrape stalled after {} bytes", got.len());
        let head = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        assert!(got.starts_with(b"HTTP/1.1 200"));
        assert_eq!(
            got.len() - head - 4,
            BODY,
            "the scrape was cut off: its connection was evicted"
        );
        drop(crowd);
    }
}
