//! A real `quickcmd-agent` process on loopback with a generated config, TLS certificate and
//! secret, and a `quickcmd::Client` for it — what `scripts/lib-local-agent.sh` does, here so
//! the benchmark owns its agents' life cycles.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use quickcmd::client::AgentEndpoint;
use quickcmd::{Client, ClientOptions, JobSpec, Secret, Trust};
use quickcmd_protocol::{JobStatus, LogFrame};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CONTROLLER_ID: &str = "bench";

pub(crate) struct LocalAgent {
    pub(crate) name: String,
    pub(crate) client: Client,
    /// For `/metrics`, which the client library does not read.
    http: reqwest::Client,
    child: Child,
    _dir: tempfile::TempDir,
}

/// How one job ended, seen from the client.
pub(crate) struct Finished {
    pub(crate) status: Option<JobStatus>,
    pub(crate) exit_code: Option<i64>,
    /// From just before signing to the first output frame (not the final one), if any.
    pub(crate) first_frame: Option<Duration>,
    /// From just before signing to the final frame.
    pub(crate) total: Duration,
    pub(crate) output_bytes: usize,
}

impl LocalAgent {
    /// Starts `agent_bin` with `warm_pool_size` and waits for its "listening on" line.
    pub(crate) async fn start(
        agent_bin: &Path,
        name: &str,
        image: &str,
        warm_pool_size: usize,
    ) -> Result<LocalAgent> {
        let dir = tempfile::Builder::new()
            .prefix("quickcmd-bench-")
            .tempdir()
            .context("cannot make a temporary directory")?;
        let root = dir.path();
        let generated = quickcmd::tls::generate_cert(&["127.0.0.1".to_owned()], 2)
            .map_err(|e| anyhow!("cannot generate a certificate: {e}"))?;
        let (cert, key) = quickcmd::tls::write_cert_files(root, &generated, true)
            .map_err(|e| anyhow!("cannot write the certificate: {e}"))?;
        let secret_text = quickcmd::secret::generate_key();
        let secret_file = root.join("hmac.secret");
        // 0600: the agent refuses a secret file others can read.
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&secret_file)
                .and_then(|mut file| file.write_all(secret_text.as_bytes()))
                .context("cannot write the secret")?;
        }
        let agent_id = format!("bench-{name}-{}", std::process::id());
        let data = root.join("data");
        let config = format!(
            "port: 0\nbind_address: \"127.0.0.1\"\nagent_id: \"{agent_id}\"\n\
             tls_cert_file: \"{}\"\ntls_key_file: \"{}\"\nhmac_secret_file: \"{}\"\n\
             allowed_controllers: [\"{CONTROLLER_ID}\"]\nallowed_images: [\"{image}\"]\n\
             default_image: \"{image}\"\nmax_concurrent_jobs: 8\nmax_queued_jobs: 256\n\
             default_timeout_seconds: 300\nmax_timeout_seconds: 300\n\
             data_dir: \"{}\"\naudit_db_path: \"{}\"\nwarm_pool_size: {warm_pool_size}\n",
            cert.display(),
            key.display(),
            secret_file.display(),
            data.display(),
            data.join("agent-audit.db").display(),
        );
        let config_file = root.join("agent-config.yaml");
        std::fs::write(&config_file, config).context("cannot write the agent config")?;
        let log = std::fs::File::create(root.join("agent.log")).context("cannot create the log")?;
        let mut child = Command::new(agent_bin)
            .arg(format!("--config={}", config_file.display()))
            .env("QUICKCMD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (run `make build` first)",
                    agent_bin.display()
                )
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no agent stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return Ok::<_, std::io::Error>(Some(url.to_owned()));
                }
            }
            Ok(None)
        })
        .await
        .map_err(|_| anyhow!("the agent did not listen within 30 s"))??
        .ok_or_else(|| {
            // The directory (and its log) goes with this error: show the log's end here.
            let log = std::fs::read_to_string(root.join("agent.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow!(
                "the agent exited at start; its log ends:\n{}",
                tail.join("\n")
            )
        })?;
        // Keep reading stdout so the agent never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let endpoint = AgentEndpoint {
            name: name.to_owned(),
            url: format!("{url}/").parse().context("agent url")?,
            controller_id: CONTROLLER_ID.to_owned(),
            secret: Secret::from_text(&secret_text)
                .ok_or_else(|| anyhow!("bad generated secret"))?,
            trust: Trust::pinned_from_file(&cert).map_err(|e| anyhow!("{e}"))?,
        };
        let tls = quickcmd::tls::client_config(&endpoint.trust).map_err(|e| anyhow!("{e}"))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .context("cannot build the metrics client")?;
        let client = Client::new(endpoint, ClientOptions::default())
            .map_err(|e| anyhow!("cannot build the client: {e}"))?;
        let agent = LocalAgent {
            name: name.to_owned(),
            client,
            http,
            child,
            _dir: dir,
        };
        if warm_pool_size > 0 {
            agent
                .wait_pool_idle(warm_pool_size, Duration::from_secs(60))
                .await?;
        }
        Ok(agent)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Resident set size of the agent process, in bytes.
    pub(crate) fn rss_bytes(&self) -> Result<u64> {
        rss_of(self.pid().ok_or_else(|| anyhow!("the agent has exited"))?)
    }

    /// The agent's `/metrics` text (no auth; the same pinned TLS as the client).
    pub(crate) async fn metrics(&self) -> Result<String> {
        let url = self.client.url().join("metrics")?;
        let answer = self.http.get(url.clone()).send().await?;
        if !answer.status().is_success() {
            bail!("GET {url}: {}", answer.status());
        }
        Ok(answer.text().await?)
    }

    pub(crate) async fn metric(&self, name: &str) -> Result<f64> {
        let text = self.metrics().await?;
        text.lines()
            .find_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                (key == name).then(|| value.parse::<f64>().ok()).flatten()
            })
            .ok_or_else(|| anyhow!("{name} not in /metrics of {}", self.name))
    }

    pub(crate) async fn wait_pool_idle(&self, count: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.metric("quickcmd_agent_warm_pool_idle").await? >= count as f64 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the warm pool of {} did not fill to {count}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Signs, submits and follows `command` to its final frame.
    pub(crate) async fn run(&self, command: &str) -> Result<Finished> {
        self.run_observed(command, |_| {}).await
    }

    /// As `run`, calling `on_frame` for every output frame as it arrives.
    pub(crate) async fn run_observed(
        &self,
        command: &str,
        mut on_frame: impl FnMut(&LogFrame),
    ) -> Result<Finished> {
        let started = Instant::now();
        let job_id = self.submit(command).await?;
        let mut stream = self.client.stream(&job_id, 0);
        let mut first_frame = None;
        let mut output_bytes = 0;
        loop {
            let frame = stream
                .next()
                .await
                .map_err(|e| anyhow!("stream of {job_id}: {e}"))?
                .ok_or_else(|| anyhow!("stream of {job_id} ended without a final frame"))?;
            if frame.is_final {
                return Ok(Finished {
                    status: frame.status,
                    exit_code: frame.exit_code,
                    first_frame,
                    total: started.elapsed(),
                    output_bytes,
                });
            }
            first_frame.get_or_insert_with(|| started.elapsed());
            output_bytes += frame.data.len();
            on_frame(&frame);
        }
    }

    /// Signs and submits `command`; returns its job id.
    pub(crate) async fn submit(&self, command: &str) -> Result<String> {
        let job_id = uuid::Uuid::now_v7().to_string();
        let signed = self
            .client
            .sign(&JobSpec::new(command), &job_id)
            .map_err(|e| anyhow!("sign: {e}"))?;
        self.client
            .submit(&signed)
            .await
            .map_err(|e| anyhow!("submit to {}: {e}", self.name))?;
        Ok(job_id)
    }

    /// SIGTERM, so the agent drains and removes its warm containers; SIGKILL after 30 s.
    pub(crate) async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => self.child.kill().await?,
        }
        Ok(())
    }
}

/// `VmRSS` of process `pid`, in bytes.
pub(crate) fn rss_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}
