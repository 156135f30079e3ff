//! Following a job's log frames over the WebSocket (protocol-v1 §3): in order, each frame
//! once, resuming with `?since=<last seq>` after a dropped connection, a 1008 "fell
//! behind" close, or a long silence — until the final frame.

use std::time::Duration;

use futures_util::StreamExt;
use quickcmd_protocol::{is_valid_job_id, Encoding, LogFrame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::{Client, ClientError};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest single frame we accept; the agent chunks output far below this.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Close code an agent sends to a subscriber that fell too far behind.
const CLOSE_FELL_BEHIND: u16 = 1008;

/// How a stream recovers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// Silence after which we reconnect (a dead peer sends no close).
    pub idle_timeout: Duration,
    /// The wait before each consecutive reconnect after a failure; its length is how many
    /// failures in a row we tolerate. A received frame resets the count.
    pub reconnect_delays: Vec<Duration>,
    /// How many resumes that are not failures (1008 closes, idle reconnects) we allow.
    pub max_resumes: u32,
}

impl Default for StreamOptions {
    fn default() -> StreamOptions {
        StreamOptions {
            idle_timeout: Duration::from_secs(45),
            reconnect_delays: vec![
                Duration::from_millis(100),
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4),
            ],
            max_resumes: 1000,
        }
    }
}

/// A job's log frames, from `Client::stream`.
pub struct LogStream {
    client: Client,
    job_id: String,
    last_seq: u64,
    socket: Option<Socket>,
    done: bool,
    failures_in_a_row: usize,
    resumes: u32,
    reconnects: u32,
    connected_once: bool,
    duplicates: u64,
    encoding: Encoding,
}

impl std::fmt::Debug for LogStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStream")
            .field("agent", &self.client.name())
            .field("job_id", &self.job_id)
            .field("last_seq", &self.last_seq)
            .field("done", &self.done)
            .finish()
    }
}

impl LogStream {
    pub(super) fn new(client: Client, job_id: String, since: u64, encoding: Encoding) -> LogStream {
        LogStream {
            client,
            job_id,
            last_seq: since,
            socket: None,
            done: false,
            failures_in_a_row: 0,
            resumes: 0,
            reconnects: 0,
            connected_once: false,
            duplicates: 0,
            encoding,
        }
    }

    /// How frame `data` is encoded on this stream.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The bytes a frame of this stream carries.
    pub fn bytes(&self, frame: &LogFrame) -> Result<Vec<u8>, ClientError> {
        self.encoding
            .decode(&frame.data)
            .map_err(|e| ClientError::Protocol {
                message: format!("log frame {} of job {}: {e}", frame.seq, self.job_id),
            })
    }

    /// The `seq` of the last frame returned (or the `since` we started from).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// How many times the connection was re-established.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// How many frames the agent sent again that we already had (protocol v1 resumes
    /// *after* `since`, so a conforming agent sends none).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The next frame; the final frame (`is_final`) is returned too, then `Ok(None)`.
    /// An error means the stream could not be recovered.
    pub async fn next(&mut self) -> Result<Option<LogFrame>, ClientError> {
        let idle_timeout = self.client.options().stream.idle_timeout;
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(socket) = self.socket.as_mut() else {
                match self.connect().await {
                    Ok(socket) => self.socket = Some(socket),
                    Err(error) if error.is_retryable() => self.failed(error).await?,
                    Err(error) => return Err(error),
                }
                continue;
            };
            let message = match tokio::time::timeout(idle_timeout, socket.next()).await {
                Err(_silence) => {
                    tracing::debug!(
                        "{}: no frame of job {} for {idle_timeout:?}; reconnecting",
                        self.client.name(),
                        self.job_id
                    );
                    self.socket = None;
                    self.resumed()?;
                    continue;
                }
                Ok(None) => {
                    self.socket = None;
                    self.failed(ClientError::Network {
                        message: "connection ended before the final frame".into(),
                    })
                    .await?;
                    continue;
                }
                Ok(Some(Err(error))) => {
                    self.socket = None;
                    self.failed(ClientError::from_websocket(error, "reading the log stream"))
                        .await?;
                    continue;
                }
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => {
                    let frame: LogFrame =
                        serde_json::from_str(text.as_str()).map_err(|e| ClientError::Protocol {
                            message: format!("log frame is not protocol v1 JSON: {e}"),
                        })?;
                    if frame.job_id != self.job_id {
                        return Err(ClientError::Protocol {
                            message: format!(
                                "log frame of job {} on the stream of job {}",
                                frame.job_id, self.job_id
                            ),
                        });
                    }
                    if frame.seq <= self.last_seq {
                        // Already delivered before a reconnect.
                        self.duplicates += 1;
                        continue;
                    }
                    self.last_seq = frame.seq;
                    self.failures_in_a_row = 0;
                    if frame.is_final {
                        self.done = true;
                        if let Some(mut socket) = self.socket.take() {
                            // Best effort: the agent closes anyway.
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), socket.close(None))
                                    .await;
                        }
                    }
                    return Ok(Some(frame));
                }
                Message::Close(close) => {
                    self.socket = None;
                    let code = close.as_ref().map(|c| u16::from(c.code));
                    if code == Some(CLOSE_FELL_BEHIND) {
                        tracing::debug!(
                            "{}: fell behind on job {}; resuming after frame {}",
                            self.client.name(),
                            self.job_id,
                            self.last_seq
                        );
                        self.resumed()?;
                    } else {
                        let code = code.map(|c| c.to_string()).unwrap_or_else(|| "none".into());
                        self.failed(ClientError::Network {
                            message: format!("closed with code {code} before the final frame"),
                        })
                        .await?;
                    }
                }
                // Pings are answered by tungstenite; nothing else carries frames.
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Counts a failure and waits before reconnecting, or gives up.
    async fn failed(&mut self, error: ClientError) -> Result<(), ClientError> {
        let delays = &self.client.options().stream.reconnect_delays;
        let Some(delay) = delays.get(self.failures_in_a_row).copied() else {
            return Err(ClientError::StreamLost {
                job_id: self.job_id.clone(),
                last_seq: self.last_seq,
                message: error.to_string(),
            });
        };
        self.failures_in_a_row += 1;
        tracing::debug!(
            "{}: log stream of job {}: {error}; reconnecting after frame {} in {delay:?}",
            self.client.name(),
            self.job_id,
            self.last_seq
        );
        self.client.notify_retry(
            &format!("log stream of job {}", self.job_id),
            &error.to_string(),
            (self.failures_in_a_row, delays.len()),
            delay,
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Counts a resume that is not a failure, bounded so a misbehaving agent cannot keep
    /// us forever.
    fn resumed(&mut self) -> Result<(), ClientError> {
        self.resumes += 1;
        if self.resumes > self.client.options().stream.max_resumes {
            return Err(ClientError::StreamLost {
                job_id: self.job_id.clone(),
                last_seq: self.last_seq,
                message: format!("resumed {} times", self.resumes - 1),
            });
        }
        Ok(())
    }

    async fn connect(&mut self) -> Result<Socket, ClientError> {
        if !is_valid_job_id(&self.job_id) {
            return Err(ClientError::InvalidJobId(self.job_id.clone()));
        }
        let path = format!("/api/v1/stream/{}", self.job_id);
        let mut query = Vec::new();
        if self.last_seq > 0 {
            query.push(format!("since={}", self.last_seq));
        }
        if self.encoding != Encoding::Text {
            query.push(format!("encoding={}", self.encoding));
        }
        let query = (!query.is_empty()).then(|| query.join("&"));
        let mut url = self.client.url_for(&path, query.as_deref());
        url.set_scheme("wss").map_err(|()| {
            ClientError::Setup(format!("cannot make a wss URL from {}", self.client.url()))
        })?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::from_websocket(e, "opening the log stream"))?;
        let auth = HeaderValue::from_str(&self.client.read_auth("GET", &path))
            .map_err(|e| ClientError::Setup(format!("read auth header: {e}")))?;
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::header::AUTHORIZATION,
            auth,
        );
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(Connector::Rustls(self.client.ws_tls())),
        );
        let connect_timeout = self.client.options().connect_timeout;
        let socket = match tokio::time::timeout(connect_timeout, connecting).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    during: "opening the log stream".into(),
                })
            }
            Ok(Err(error)) => {
                return Err(self
                    .client
                    .explain(ClientError::from_websocket(error, "opening the log stream")))
            }
            Ok(Ok((socket, _response))) => socket,
        };
        if self.connected_once {
            self.reconnects += 1;
        }
        self.connected_once = true;
        Ok(socket)
    }
}
