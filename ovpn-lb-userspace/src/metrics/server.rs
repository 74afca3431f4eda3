//! The HTTP endpoint: `GET /metrics` (Prometheus text) and `GET /healthz`.
//!
//! The loader runs as root, so any local user must not be able to stall it
//! or make it grow: connections are capped, headers must arrive within a few
//! seconds and fit in 8 KiB, bodies are never read, and when the cap is
//! reached the oldest connection that is not being answered makes room, so
//! a crowd of idle connections cannot lock Prometheus out.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
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
use tokio::{net::TcpListener, sync::Notify};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A request's headers must be complete this long after it starts.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted (hyper's minimum buffer size).
pub const MAX_HEAD_BYTES: usize = 8192;

/// Produces the exposition text for one scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

struct Connection {
    /// A request is being answered: not evictable.
    busy: Arc<AtomicBool>,
    evict: Arc<Notify>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    /// By arrival: the first idle one is the oldest.
    open: BTreeMap<u64, Connection>,
}

impl Registry {
    /// Admits a connection, evicting the oldest idle one at the cap; `None`
    /// when every slot is busy answering.
    fn admit(&mut self) -> Option<(u64, Arc<AtomicBool>, Arc<Notify>)> {
        if self.open.len() >= MAX_CONNECTIONS {
            let idle = self
                .open
                .iter()
                .find(|(_, c)| !c.busy.load(Ordering::Relaxed))
                .map(|(&id, _)| id)?;
            if let Some(c) = self.open.remove(&idle) {
                c.evict.notify_one();
            }
        }
        let id = self.next;
        self.next += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let evict = Arc::new(Notify::new());
        self.open.insert(
            id,
            Connection {
                busy: busy.clone(),
                evict: evict.clone(),
            },
        );
        Some((id, busy, evict))
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
        let Some((id, busy, evict)) = admitted else {
            continue; // Every slot is answering a request: drop this one.
        };
        let render = render.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let render = render.clone();
                let busy = busy.clone();
                async move {
                    busy.store(true, Ordering::Relaxed);
                    let response = answer(&req, &render);
                    busy.store(false, Ordering::Relaxed);
                    Ok::<_, Infallible>(response)
                }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .max_headers(64);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
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
