//! Runs one command on one agent with the client library: sign, submit, stream the output
//! live, then read the result.
//!
//! ```text
//! QUICKCMD_AGENT_URL=https://127.0.0.1:8443 \
//! QUICKCMD_CA_CERT=agent-cert.pem \
//! QUICKCMD_HMAC_SECRET=$(cat hmac.secret) \
//! QUICKCMD_CONTROLLER_ID=controller-1 \
//! cargo run -p quickcmd --example run_one -- 'uname -a; echo done'
//! ```

use std::io::Write;
use std::process::ExitCode;

use quickcmd::client::{AgentEndpoint, Client, ClientOptions};
use quickcmd::job::{new_job_id, JobSpec};
use quickcmd::{Secret, Trust};
use quickcmd_protocol::StreamName;

fn setting(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("set {name}"))
}

async fn run() -> Result<u8, String> {
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    if command.is_empty() {
        return Err("give the command to run as arguments".into());
    }
    let endpoint = AgentEndpoint {
        name: "example".into(),
        url: setting("QUICKCMD_AGENT_URL")?
            .parse()
            .map_err(|e| format!("QUICKCMD_AGENT_URL: {e}"))?,
        controller_id: setting("QUICKCMD_CONTROLLER_ID")?,
        secret: Secret::from_text(&setting("QUICKCMD_HMAC_SECRET")?)
            .ok_or("QUICKCMD_HMAC_SECRET is empty")?,
        trust: Trust::pinned_from_file(setting("QUICKCMD_CA_CERT")?.as_ref())
            .map_err(|e| e.to_string())?,
    };
    let client = Client::new(endpoint, ClientOptions::default()).map_err(|e| e.to_string())?;

    // One job id per submission; retries inside `submit` resend the same signed bytes.
    let job = client
        .sign(&JobSpec::new(command), &new_job_id())
        .map_err(|e| e.to_string())?;
    client.submit(&job).await.map_err(|e| e.to_string())?;
    eprintln!("submitted job {}", job.job_id);

    // Frames arrive as the sandbox writes them; a dropped connection is resumed.
    let mut stream = client.stream(&job.job_id, 0);
    while let Some(frame) = stream.next().await.map_err(|e| e.to_string())? {
        match frame.stream {
            StreamName::Stdout => print!("{}", frame.data),
            StreamName::Stderr => eprint!("{}", frame.data),
        }
        let _ = std::io::stdout().flush();
    }

    let result = client
        .wait(&job.job_id, None)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "job {} {} with exit code {} in {} ms",
        result.job_id, result.status, result.exit_code, result.duration_ms
    );
    Ok(u8::try_from(result.exit_code).unwrap_or(1))
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("run_one: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run()) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("run_one: {error}");
            ExitCode::from(2)
        }
    }
}
