//! The YAML as written: one field per key, a doc comment each, and every default in one
//! place. Unknown keys are refused by `deny_unknown_fields`.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// TCP port of the HTTPS API; 0 picks a free port (printed at start).
    pub port: u16,
    /// Address to bind; "0.0.0.0" for all IPv4 interfaces.
    pub bind_address: String,
    /// Name of this agent in labels, logs and health; default: the hostname.
    pub agent_id: Option<String>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Serve plain HTTP; only accepted with a loopback bind_address.
    pub insecure_plain_http: bool,
    /// Shared secret of the controllers named in `allowed_controllers`.
    pub hmac_secret: Option<String>,
    /// File holding the shared secret (instead of `hmac_secret`).
    pub hmac_secret_file: Option<PathBuf>,
    /// Controllers that use the shared secret and have no scopes.
    pub allowed_controllers: Vec<String>,
    /// Controllers with their own secret and scopes.
    pub controllers: Vec<RawController>,
    pub max_concurrent_jobs: usize,
    /// Accepted jobs waiting for a slot; beyond this, 429 QUEUE_FULL.
    pub max_queued_jobs: usize,
    /// Jobs one controller may run at once; unset: `max_concurrent_jobs`.
    pub max_running_jobs_per_controller: Option<usize>,
    /// Jobs one controller may have waiting; unset: `max_queued_jobs`.
    pub max_queued_jobs_per_controller: Option<usize>,
    pub allowed_images: Vec<String>,
    pub default_image: Option<String>,
    pub run_as_user: Option<String>,
    pub run_as_group: Option<String>,
    /// CPU cores.
    pub default_cpu_limit: f64,
    pub max_cpu_limit: f64,
    /// Bytes; memory and memory+swap.
    pub default_memory_limit: i64,
    pub max_memory_limit: i64,
    pub default_timeout_seconds: u64,
    pub max_timeout_seconds: u64,
    pub pids_limit: i64,
    /// Stored output per stream; head and tail are kept beyond it.
    pub max_output_bytes: usize,
    /// `uid:gid` the command runs as inside the sandbox.
    pub sandbox_user: String,
    /// Size of the tmpfs at /tmp in the sandbox, bytes.
    pub sandbox_tmp_bytes: i64,
    /// Size of the writable work dir in the sandbox, bytes.
    pub sandbox_workdir_bytes: i64,
    pub mounts: Vec<RawMount>,
    pub clock_skew_seconds: i64,
    /// Largest allowed `ttl - timestamp`.
    pub max_job_lifetime_seconds: i64,
    pub data_dir: PathBuf,
    pub job_retention_days: u32,
    /// The seed's unauthenticated reads; off by default.
    pub legacy_open_reads: bool,
    /// Docker endpoint, e.g. unix:///var/run/docker.sock; default: the local socket.
    pub docker_host: Option<String>,
    /// text or json.
    pub log_format: String,
    pub audit_db_path: Option<PathBuf>,
    pub shutdown_grace_seconds: u64,
    /// Frames a WebSocket subscriber may fall behind before it is dropped (close 1008).
    pub stream_buffer_frames: usize,
    /// Frames stored per stream of one job (half head, half tail); beyond, the middle is
    /// dropped with a marker, as for `max_output_bytes`.
    pub max_output_frames: usize,
    /// Refused submissions from one source address audited row by row per minute; beyond,
    /// counted into one summary row per source per minute.
    pub audit_refusals_per_source_per_minute: u32,
    /// Open client connections (TLS handshakes and WebSockets included); beyond this a new
    /// connection is closed at once.
    pub max_connections: usize,
    /// Time a client has to send a whole request header (HTTP/1.1, also between keep-alive
    /// requests); then the connection is closed.
    pub header_read_timeout_seconds: u64,
    /// Time a client has to send a whole request body, counted from its header; then the
    /// connection is closed without an answer.
    pub body_read_timeout_seconds: u64,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout_seconds: u64,
    /// A WebSocket subscriber that does not take a frame within this time is closed (1008).
    pub stream_send_timeout_seconds: u64,
    /// Sandbox containers of the default profile kept started ahead of time; 0 disables.
    pub warm_pool_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawController {
    pub id: String,
    pub hmac_secret: Option<String>,
    pub hmac_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMount {
    pub name: String,
    pub source: PathBuf,
    pub target: String,
    #[serde(default = "yes")]
    pub read_only: bool,
}

fn yes() -> bool {
    true
}

impl Default for RawConfig {
    fn default() -> RawConfig {
        RawConfig {
            port: 8443,
            bind_address: "0.0.0.0".to_string(),
            agent_id: None,
            tls_cert_file: None,
            tls_key_file: None,
            insecure_plain_http: false,
            hmac_secret: None,
            hmac_secret_file: None,
            allowed_controllers: Vec::new(),
            controllers: Vec::new(),
            max_concurrent_jobs: 5,
            max_queued_jobs: 100,
            max_running_jobs_per_controller: None,
            max_queued_jobs_per_controller: None,
            allowed_images: vec!["alpine:latest".to_string()],
            default_image: None,
            run_as_user: None,
            run_as_group: None,
            default_cpu_limit: 0.5,
            max_cpu_limit: 2.0,
            default_memory_limit: 268_435_456,
            max_memory_limit: 1_073_741_824,
            default_timeout_seconds: 300,
            max_timeout_seconds: 3600,
            pids_limit: 256,
            max_output_bytes: 1_048_576,
            sandbox_user: "65534:65534".to_string(),
            sandbox_tmp_bytes: 67_108_864,
            sandbox_workdir_bytes: 268_435_456,
            mounts: Vec::new(),
            clock_skew_seconds: 300,
            max_job_lifetime_seconds: 3600,
            data_dir: PathBuf::from("/var/lib/quickcmd"),
            job_retention_days: 30,
            legacy_open_reads: false,
            docker_host: None,
            log_format: "text".to_string(),
            audit_db_path: None,
            shutdown_grace_seconds: 30,
            stream_buffer_frames: 1024,
            max_output_frames: crate::stream::DEFAULT_MAX_OUTPUT_FRAMES,
            audit_refusals_per_source_per_minute: crate::flood::DEFAULT_ROWS_PER_WINDOW,
            max_connections: 1024,
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 30,
            idle_timeout_seconds: 60,
            stream_send_timeout_seconds: 30,
            warm_pool_size: 2,
        }
    }
}
