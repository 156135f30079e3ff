//! WebSocket log streams: subscribe (signed, or with any `Authorization`), read frames, and
//! the [`Transcript`] of what a subscriber saw from connect to close.

use std::time::Duration;

use futures_util::StreamExt;
use quickcmd_protocol::{JobStatus, LogFrame, ReadAuth};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::process::TestAgent;
use crate::{now, PATIENCE};

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// What a subscriber saw from connect to close.
#[derive(Debug)]
pub struct Transcript {
    pub frames: Vec<LogFrame>,
    /// The close frame, if the agent sent one.
    pub close: Option<CloseFrame>,
}

impl Transcript {
    /// The data of the non-final frames, concatenated in order.
    pub fn text(&self, stream: &str) -> String {
        self.frames
            .iter()
            .filter(|f| !f.is_final && f.stream.as_str() == stream)
            .map(|f| f.data.as_str())
            .collect()
    }

    /// Asserts the shape of a complete transcript: seq increasing by one from `first`, one
    /// final frame at the end (status, exit code), then a normal close.
    #[track_caller]
    pub fn assert_complete(&self, first: u64, status: JobStatus, exit_code: i64) {
        let seqs: Vec<u64> = self.frames.iter().map(|f| f.seq).collect();
        let expected: Vec<u64> = (first..first + self.frames.len() as u64).collect();
        assert_eq!(seqs, expected, "frames out of order: {:#?}", self.frames);
        let last = self.frames.last().expect("at least the final frame");
        assert!(last.is_final, "last frame is not final: {last:?}");
        assert_eq!(last.status, Some(status), "{last:?}");
        assert_eq!(last.exit_code, Some(exit_code), "{last:?}");
        assert_eq!(last.data, "", "{last:?}");
        assert_eq!(last.stream.as_str(), "stdout", "{last:?}");
        assert_eq!(
            self.frames.iter().filter(|f| f.is_final).count(),
            1,
            "more than one final frame"
        );
        let close = self.close.as_ref().expect("the agent closes the socket");
        assert_eq!(u16::from(close.code), 1000, "not a normal close: {close:?}");
    }
}

/// Reads the next log frame; `None` once the socket closed (the close frame is returned in
/// `close`).
pub async fn next_frame(ws: &mut Ws, close: &mut Option<CloseFrame>) -> Option<LogFrame> {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the log stream went silent for too long");
        match message {
            Some(Ok(Message::Text(text))) => {
                return Some(
                    serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("frame is not a LogFrame ({e}): {text}")),
                );
            }
            Some(Ok(Message::Close(frame))) => {
                *close = frame;
                // Drain to the end so the closing handshake completes.
                while let Ok(Some(Ok(_))) =
                    tokio::time::timeout(Duration::from_secs(5), ws.next()).await
                {}
                return None;
            }
            Some(Ok(Message::Binary(_))) => panic!("the agent sent a binary message"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => panic!("WebSocket error: {error}"),
            None => return None,
        }
    }
}

/// Reads frames until the agent closes the socket.
pub async fn read_to_close(mut ws: Ws) -> Transcript {
    let mut frames = Vec::new();
    let mut close = None;
    while let Some(frame) = next_frame(&mut ws, &mut close).await {
        frames.push(frame);
    }
    Transcript { frames, close }
}

impl TestAgent {
    /// Opens `/api/v1/stream/<job_id>[?query]` with this `Authorization` value (or none).
    pub async fn ws_connect(
        &self,
        job_id: &str,
        query: &str,
        authorization: Option<String>,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let base = self.base.replacen("https://", "wss://", 1);
        let url = if query.is_empty() {
            format!("{base}/api/v1/stream/{job_id}")
        } else {
            format!("{base}/api/v1/stream/{job_id}?{query}")
        };
        let mut request = url.into_client_request()?;
        if let Some(value) = authorization {
            request.headers_mut().insert(
                "authorization",
                value.parse().expect("authorization is a header value"),
            );
        }
        let connector = Connector::Rustls(self.tls.clone());
        let (ws, _) = tokio::time::timeout(
            PATIENCE,
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector)),
        )
        .await
        .expect("WebSocket connect hung")?;
        Ok(ws)
    }

    /// Subscribes as `controller_id` with the signed header; `since` resumes.
    pub async fn subscribe(&self, controller_id: &str, job_id: &str, since: Option<u64>) -> Ws {
        let auth = ReadAuth::sign(
            controller_id,
            self.secret_of(controller_id).as_bytes(),
            "GET",
            &format!("/api/v1/stream/{job_id}"),
            now(),
        );
        let query = since.map(|s| format!("since={s}")).unwrap_or_default();
        self.ws_connect(job_id, &query, Some(auth.header_value()))
            .await
            .unwrap_or_else(|e| panic!("subscribe to {job_id}: {e}; agent log:\n{}", self.log()))
    }
}
