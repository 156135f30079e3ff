//! One client connection from accept to close: the cap on open connections, the header,
//! body and idle timeouts, so a peer that opens sockets and sends little cannot hold the
//! agent's file descriptors and tasks.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::ConnectionLimits;
use crate::state::Agent;

/// Counts open connections. A slot lives as long as the socket, so an upgraded WebSocket
/// keeps counting after its HTTP exchange is over.
pub(crate) struct ConnectionCap {
    semaphore: Arc<Semaphore>,
    agent: Arc<Agent>,
}

/// One admitted connection's place under the cap.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    agent: Arc<Agent>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.agent.metrics.connection_closed();
    }
}

impl ConnectionCap {
    pub(crate) fn new(max_connections: usize, agent: Arc<Agent>) -> ConnectionCap {
        ConnectionCap {
            semaphore: Arc::new(Semaphore::new(max_connections)),
            agent,
        }
    }

    /// A slot for a new connection, or `None` when the cap is reached (counted as refused).
    pub(crate) fn admit(&self) -> Option<Slot> {
        match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => {
                self.agent.metrics.connection_opened();
                Some(Slot {
                    _permit: permit,
                    agent: self.agent.clone(),
                })
            }
            Err(_) => {
                self.agent.metrics.connection_refused();
                None
            }
        }
    }
}

/// A socket that holds its slot until it is dropped.
pub(crate) struct Counted<T> {
    inner: T,
    _slot: Slot,
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T, slot: Slot) -> Counted<T> {
        Counted { inner, _slot: slot }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last_change: Mutex<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_change: Mutex::new(Instant::now()),
        }
    }

    fn stamp(&self) {
        *self.last_change.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.stamp();
        InFlight(self.clone())
    }

    /// When the connection becomes idle if nothing changes; `None` while a request runs.
    fn idle_at(&self, idle: std::time::Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(*self.last_change.lock().unwrap_or_else(|p| p.into_inner()) + idle)
    }
}

/// Ends a request's time in flight when its response is ready or it is dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.stamp();
    }
}

/// A request body that must arrive whole before a deadline. Past it, the connection is
/// told to close and the body never yields again: the handler is dropped with the
/// connection, so a half-sent body gets no answer and leaves no half-done work.
pub(crate) struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    expired: CancellationToken,
}

impl Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.expired.cancel();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves HTTP on one accepted (and, with TLS, handshaken) socket until the client closes
/// it, a timeout closes it, or the graceful shutdown has drained it.
pub(crate) async fn serve<I>(
    io: I,
    app: Router,
    remote: SocketAddr,
    limits: ConnectionLimits,
    watcher: Watcher,
    agent: Arc<Agent>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let body_expired = CancellationToken::new();
    let service = {
        let activity = activity.clone();
        let body_expired = body_expired.clone();
        tower::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = activity.begin();
            let deadline = Instant::now() + limits.body_read_timeout;
            let mut request = request.map(|inner| TimedBody {
                inner,
                deadline,
                sleep: None,
                expired: body_expired.clone(),
            });
            request.extensions_mut().insert(ConnectInfo(remote));
            let call = app.clone().oneshot(request);
            async move {
                let response = call.await;
                drop(in_flight);
                response
            }
        })
    };
    let service = hyper_util::service::TowerToHyperService::new(service);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let connection =
        watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
    tokio::pin!(connection);
    loop {
        // While a request runs, look again after a full idle period.
        let idle_at = activity
            .idle_at(limits.idle_timeout)
            .unwrap_or_else(|| Instant::now() + limits.idle_timeout);
        tokio::select! {
            result = &mut connection => {
                if let Err(error) = result {
                    let header_timeout = error
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout);
                    if header_timeout {
                        agent.metrics.connection_timed_out("header");
                        tracing::debug!(%remote, "request header not received in time; connection closed");
                    } else {
                        tracing::debug!(%remote, %error, "connection ended with an error");
                    }
                }
                return;
            }
            () = body_expired.cancelled() => {
                agent.metrics.connection_timed_out("body");
                tracing::info!(%remote, "request body not received in time; connection closed");
                return;
            }
            () = tokio::time::sleep_until(idle_at) => {
                if activity.idle_at(limits.idle_timeout).is_some_and(|at| at <= Instant::now()) {
                    agent.metrics.connection_timed_out("idle");
                    tracing::debug!(%remote, "idle connection closed");
                    return;
                }
            }
        }
    }
}
