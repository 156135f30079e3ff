//! `GET /api/v1/stream/:id` (WebSocket): stored frames after `since`, then live frames,
//! then the final frame and a normal close. Refusals happen at the upgrade, with a status.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method};
use axum::response::Response;
use futures_util::{Sink, SinkExt, StreamExt};
use quickcmd_protocol::{Encoding, ErrorCode, LogFrame, StreamName};
use tokio::sync::broadcast::error::RecvError;

use super::auth::{authenticate, Reader};
use super::job_routes::{encoding_of, visible_job};
use super::ApiError;
use crate::queue::LiveJob;
use crate::state::Agent;
use crate::store::JobRecord;
use crate::stream::{final_frame, Frame};

/// Close code for a subscriber that fell too far behind or stopped reading (policy
/// violation).
const CLOSE_LAGGED: u16 = 1008;
/// A subscriber only ever sends control frames (ping, pong, close): anything bigger is
/// refused by the WebSocket layer, which ends the stream.
const MAX_CLIENT_MESSAGE_BYTES: usize = 4 * 1024;
/// Output buffered for one subscriber beyond the socket; past it a send waits (and then
/// times out) instead of growing memory.
const MAX_WRITE_BUFFER_BYTES: usize = 1024 * 1024;
/// How long the 1008 close may take to go out to a subscriber that stopped reading.
const CLOSE_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a send to a subscriber ended the stream.
enum SendFailed {
    /// The socket is gone.
    Closed,
    /// The subscriber did not take the frame within `stream_send_timeout_seconds`.
    TimedOut,
}

/// Sends one message, giving up on a subscriber that does not take it in time (a client
/// that never reads must not hold this task and its buffers forever).
async fn send_timed<S>(agent: &Agent, sink: &mut S, message: Message) -> Result<(), SendFailed>
where
    S: Sink<Message> + Unpin,
{
    let limit = agent.config().connections.stream_send_timeout;
    match tokio::time::timeout(limit, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SendFailed::Closed),
        Err(_) => {
            agent.metrics.connection_timed_out("stream_send");
            tracing::info!(
                timeout_seconds = limit.as_secs(),
                "WebSocket subscriber did not read in time; closing it (1008)"
            );
            let close = Message::Close(Some(CloseFrame {
                code: CLOSE_LAGGED,
                reason: "subscriber did not read in time; reconnect with ?since=<last seq>".into(),
            }));
            let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, sink.send(close)).await;
            Err(SendFailed::TimedOut)
        }
    }
}

pub(super) async fn stream(
    State(agent): State<Arc<Agent>>,
    Path(job_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let path = format!("/api/v1/stream/{job_id}");
    let reader = authenticate(&agent, &Method::GET, &path, &headers, &query, true)?;
    if reader == Reader::Open {
        // The seed's open WebSocket: gated by an Origin naming an allowed controller.
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if agent.config().controller(origin).is_none() {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "open log streams need an Origin equal to an allowed controller",
            ));
        }
    }
    let since = parse_since(&query)?;
    let encoding = encoding_of(&query)?;
    let job = visible_job(&agent, &reader, &job_id).await?;
    let live = agent.jobs.live(&job_id);
    let upgrade = upgrade
        .max_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES);
    Ok(upgrade.on_upgrade(move |socket| async move {
        agent.metrics.subscriber_joined();
        match live {
            Some(live) => follow_live(&agent, socket, live, since, encoding).await,
            None => replay_stored(&agent, socket, &job, (since, encoding)).await,
        }
        agent.metrics.subscriber_left();
    }))
}

/// The `since` query parameter: the last frame seq the subscriber has; 0 when absent.
pub(crate) fn parse_since(query: &HashMap<String, String>) -> Result<u64, ApiError> {
    match query.get("since") {
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidPayload,
                "since must be a whole number (a frame seq)",
            )
        }),
        None => Ok(0),
    }
}

fn text(frame: &LogFrame) -> Message {
    Message::Text(serde_json::to_string(frame).unwrap_or_default().into())
}

/// A kept frame as a text message, its `data` in the subscriber's encoding.
fn message(frame: &Frame, encoding: Encoding) -> Message {
    text(&frame.to_wire(encoding))
}

/// Sends a close frame and closes, giving a subscriber that does not read a short while.
async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let message = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, async {
        let _ = socket.send(message).await;
        let _ = socket.close().await;
    })
    .await;
}

/// The normal end of a stream: close 1000 after the final frame.
async fn close_ended<S>(sink: &mut S)
where
    S: Sink<Message> + Unpin,
{
    let message = Message::Close(Some(CloseFrame {
        code: 1000,
        reason: "job ended".into(),
    }));
    let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, sink.send(message)).await;
}

async fn follow_live(
    agent: &Agent,
    socket: WebSocket,
    live: Arc<LiveJob>,
    since: u64,
    encoding: Encoding,
) {
    let subscription = live.stream.subscribe(since);
    let (mut sink, mut incoming) = socket.split();
    let mut last_sent = since;
    for frame in &subscription.replay {
        if send_timed(agent, &mut sink, message(frame, encoding))
            .await
            .is_err()
        {
            return;
        }
        last_sent = frame.log.seq;
        if frame.log.is_final {
            close_ended(&mut sink).await;
            return;
        }
    }
    let mut live_frames = subscription.live;
    let skip_up_to = subscription.replayed_up_to;
    loop {
        tokio::select! {
            received = live_frames.recv() => match received {
                Ok(frame) => {
                    if frame.log.seq <= skip_up_to || frame.log.seq <= last_sent {
                        continue;
                    }
                    if send_timed(agent, &mut sink, message(&frame, encoding)).await.is_err() {
                        return;
                    }
                    last_sent = frame.log.seq;
                    if frame.log.is_final {
                        close_ended(&mut sink).await;
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    let reason = "subscriber fell behind; reconnect with ?since=<last seq>";
                    let message = Message::Close(Some(CloseFrame { code: CLOSE_LAGGED, reason: reason.into() }));
                    let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, sink.send(message)).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            message = incoming.next() => match message {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn replay_stored(
    agent: &Agent,
    socket: WebSocket,
    job: &JobRecord,
    (since, encoding): (u64, Encoding),
) {
    let job_id = job.job_id.as_str();
    let controller_id = job.controller_id.as_str();
    let status = job.status;
    let exit_code = job.exit_code.unwrap_or(-1);
    let ended_ms = job.ended_at_ms.unwrap_or_else(crate::clock::now_ms);
    let mut socket = socket;
    let frames = match agent.store.frames_since(job_id, 0).await {
        Ok(frames) => frames,
        Err(error) => {
            tracing::error!(job_id, %error, "could not read stored frames");
            return close(socket, 1011, "job store unavailable").await;
        }
    };
    let last_seq = frames
        .iter()
        .map(|f| f.seq.max(0) as u64)
        .max()
        .unwrap_or(0);
    for frame in frames.into_iter().filter(|f| f.seq as u64 > since) {
        let log = LogFrame {
            job_id: job_id.to_string(),
            timestamp: crate::clock::rfc3339_ms(frame.timestamp_ms),
            stream: if frame.stream == "stderr" {
                StreamName::Stderr
            } else {
                StreamName::Stdout
            },
            data: encoding.encode(&frame.data),
            is_final: false,
            seq: frame.seq as u64,
            status: None,
            exit_code: None,
            audit: None,
        };
        if send_timed(agent, &mut socket, text(&log)).await.is_err() {
            return;
        }
    }
    if !status.is_final() {
        // Pending in the store but not live: only possible in the instant a job starts
        // or ends; the client reconnects with `since`.
        return close(socket, 1013, "job state is changing; reconnect with since").await;
    }
    let last = LogFrame {
        audit: agent.job_witness(job_id, controller_id).await,
        ..final_frame(
            job_id,
            last_seq.saturating_add(1),
            status,
            exit_code,
            ended_ms,
        )
    };
    if last.seq > since && send_timed(agent, &mut socket, text(&last)).await.is_err() {
        return;
    }
    close(socket, 1000, "job ended").await;
}
