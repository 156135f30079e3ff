//! The agent's YAML config as a builder, and the secrets the kit gives controllers.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::tls::TlsFiles;
use crate::IMAGE;

/// The secret of controllers listed in `allowed_controllers` (the top-level `hmac_secret`).
pub const SHARED_SECRET: &str = "shared-secret-0123456789abcdef0123456789abcdef";

/// The per-controller secret the kit gives `id` when it is configured with its own (unless
/// [`Config::controller_with_secret`] chose another).
pub fn own_secret(id: &str) -> String {
    format!("{id}-own-secret-0123456789abcdef0123456789abcdef")
}

/// The agent's YAML config, as values the test can change before (re)writing the file.
#[derive(Clone, Debug)]
pub struct Config {
    /// Controllers using the top-level `hmac_secret` ([`SHARED_SECRET`]).
    pub allowed_controllers: Vec<String>,
    /// Controllers with their own secret ([`own_secret`], or one from `own_secrets`) and
    /// scopes.
    pub controllers: Vec<(String, Vec<String>)>,
    /// Secrets of controllers in `controllers` that do not use [`own_secret`].
    pub own_secrets: BTreeMap<String, String>,
    /// Scopes of controllers that use the shared secret (listed under `controllers`
    /// without a secret of their own).
    pub shared_scopes: Vec<(String, Vec<String>)>,
    /// The top-level `hmac_secret`; [`SHARED_SECRET`] unless a test needs another.
    pub shared_secret: String,
    /// The certificate the agent serves; `None`: the kit's test certificate, written into
    /// the agent's temp dir (the only one the kit's own clients trust).
    pub tls: Option<TlsFiles>,
    /// Any other key, as YAML/JSON values.
    pub extra: BTreeMap<String, Value>,
}

impl Default for Config {
    /// `ctl-a` and `ctl-b` with their own secrets and no scopes; the sandbox image is the
    /// local one; no warm pool.
    fn default() -> Config {
        Config {
            controllers: vec![("ctl-a".into(), Vec::new()), ("ctl-b".into(), Vec::new())],
            ..Config::empty()
        }
    }
}

impl Config {
    /// No controllers at all (the agent refuses such a config until some are added); no
    /// warm pool.
    pub fn empty() -> Config {
        Config {
            allowed_controllers: Vec::new(),
            controllers: Vec::new(),
            own_secrets: BTreeMap::new(),
            shared_scopes: Vec::new(),
            shared_secret: SHARED_SECRET.to_string(),
            tls: None,
            // Tests find a job's container by its `quickcmd.job` label and count an agent's
            // containers, which only cold containers allow; pool containers are made before
            // their job exists. `.set("warm_pool_size", …)` turns the pool on.
            extra: BTreeMap::from([("warm_pool_size".to_string(), Value::from(0))]),
        }
    }

    pub fn set(mut self, key: &str, value: Value) -> Config {
        self.extra.insert(key.to_string(), value);
        self
    }

    /// Adds (or replaces) a controller with its own secret ([`own_secret`]) and these scopes.
    pub fn controller(mut self, id: &str, scopes: &[&str]) -> Config {
        self.controllers.retain(|(c, _)| c != id);
        self.own_secrets.remove(id);
        self.controllers.push((
            id.to_string(),
            scopes.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }

    /// Adds (or replaces) a controller with this secret of its own and these scopes.
    pub fn controller_with_secret(self, id: &str, secret: &str, scopes: &[&str]) -> Config {
        let mut config = self.controller(id, scopes);
        config
            .own_secrets
            .insert(id.to_string(), secret.to_string());
        config
    }

    /// Controllers that use the shared secret.
    pub fn shared(mut self, ids: &[&str]) -> Config {
        self.allowed_controllers = ids.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The top-level `hmac_secret` the shared controllers sign with.
    pub fn shared_secret(mut self, secret: &str) -> Config {
        self.shared_secret = secret.to_string();
        self
    }

    /// Grants scopes to a controller that uses the shared secret.
    pub fn shared_scopes(mut self, id: &str, scopes: &[&str]) -> Config {
        self.shared_scopes.retain(|(c, _)| c != id);
        self.shared_scopes.push((
            id.to_string(),
            scopes.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }

    /// Serves this certificate instead of the kit's test certificate.
    pub fn tls(mut self, files: TlsFiles) -> Config {
        self.tls = Some(files);
        self
    }

    /// The secret a controller signs with under this config.
    pub fn secret_of(&self, id: &str) -> String {
        if self.controllers.iter().any(|(c, _)| c == id) {
            self.own_secret_of(id)
        } else {
            self.shared_secret.clone()
        }
    }

    fn own_secret_of(&self, id: &str) -> String {
        self.own_secrets
            .get(id)
            .cloned()
            .unwrap_or_else(|| own_secret(id))
    }

    /// The certificate and key files the agent in `dir` serves.
    pub(crate) fn tls_files(&self, dir: &Path) -> TlsFiles {
        self.tls.clone().unwrap_or_else(|| TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        })
    }

    /// The YAML text of this config for the agent `agent_id` living in `dir`.
    pub fn render(&self, agent_id: &str, dir: &Path) -> String {
        let tls = self.tls_files(dir);
        let mut map = serde_json::Map::new();
        map.insert("agent_id".into(), json!(agent_id));
        map.insert("port".into(), json!(0));
        map.insert("bind_address".into(), json!("127.0.0.1"));
        map.insert(
            "tls_cert_file".into(),
            json!(tls.cert.display().to_string()),
        );
        map.insert("tls_key_file".into(), json!(tls.key.display().to_string()));
        map.insert(
            "data_dir".into(),
            json!(dir.join("data").display().to_string()),
        );
        map.insert("allowed_images".into(), json!([IMAGE]));
        map.insert("default_timeout_seconds".into(), json!(60));
        map.insert("shutdown_grace_seconds".into(), json!(2));
        if !self.allowed_controllers.is_empty() {
            map.insert("hmac_secret".into(), json!(self.shared_secret));
            map.insert(
                "allowed_controllers".into(),
                json!(self.allowed_controllers),
            );
        }
        let mut list: Vec<Value> = self
            .controllers
            .iter()
            .map(|(id, scopes)| {
                json!({"id": id, "hmac_secret": self.own_secret_of(id), "scopes": scopes})
            })
            .collect();
        list.extend(
            self.shared_scopes
                .iter()
                .map(|(id, scopes)| json!({"id": id, "scopes": scopes})),
        );
        if !list.is_empty() {
            map.insert("controllers".into(), Value::Array(list));
        }
        for (key, value) in &self.extra {
            map.insert(key.clone(), value.clone());
        }
        serde_yaml::to_string(&Value::Object(map)).expect("a JSON map renders as YAML")
    }
}
