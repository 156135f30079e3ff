//! Protocol v1.1's `GET /api/v1/whoami`: whether our secret works, and through it whether
//! the agent speaks v1.1 (and so can send output as exact bytes).

use quickcmd_protocol::{Encoding, WhoAmI};
use reqwest::Method;

use super::{expect_json, Client, ClientError};

impl Client {
    /// `GET /api/v1/whoami` (v1.1): whom the agent takes us for; a 401 means our secret
    /// (or controller id) is not the one the agent has, a 404 an agent older than v1.1.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        let answer = self
            .read(Method::GET, "/api/v1/whoami", None, "checking the secret")
            .await?;
        expect_json(answer, &[200])
    }

    /// The encoding that carries this agent's output exactly: base64 from a v1.1 agent
    /// (one that answers `whoami`), text from an older one. Asked once per client; an
    /// answer that says neither (unreachable, 401) gives text and is asked again next time.
    pub async fn output_encoding(&self) -> Encoding {
        if let Some(encoding) = self.inner.output_encoding.get() {
            return *encoding;
        }
        let encoding = match self.whoami().await {
            Ok(_) => Encoding::Base64,
            Err(error) if error.status() == Some(404) => Encoding::Text,
            Err(_) => return Encoding::Text,
        };
        let _ = self.inner.output_encoding.set(encoding);
        encoding
    }
}
