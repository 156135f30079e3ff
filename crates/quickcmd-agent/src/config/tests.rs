use super::*;

const SECRET: &str = "3f1c9a0b7d2e4f6a8b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a";

fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join("agent-config.yaml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
    path
}

fn base() -> String {
    format!("port: 8443\nbind_address: \"127.0.0.1\"\ninsecure_plain_http: true\nhmac_secret: \"{SECRET}\"\nallowed_controllers:\n  - \"controller-1\"\nallowed_images: [\"img:1\"]\n")
}

fn refused(text: &str, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = write(&dir, text);
    let message = match AgentConfig::load(&path, None) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains(&path.display().to_string()),
        "{message} lacks the path"
    );
    for needle in needles {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
}

#[test]
fn seed_config_shape_loads() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = write(&dir, &base());
    let config = AgentConfig::load(&path, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listen.port(), 8443);
    assert_eq!(config.limits.default_image, "img:1");
    assert_eq!(config.limits.default_memory_limit, 268_435_456);
    assert!(config.controller("controller-1").is_some());
    assert!(config.controller("other").is_none());
    assert!(config.warnings.is_empty());
    assert_eq!(
        format!("{:?}", config.controllers["controller-1"].secret),
        "Secret([redacted])"
    );
}

#[test]
fn bad_configs_name_key_and_line() {
    refused(
        &(base() + "max_concurent_jobs: 3\n"),
        &["max_concurent_jobs", "line 8"],
    );
    refused(
        &base().replace(SECRET, "CHANGE_ME"),
        &["hmac_secret", "CHANGE_ME", "line 4"],
    );
    refused(
        &base().replace(SECRET, "short"),
        &["hmac_secret", "at least 32 bytes"],
    );
    refused(
        &base().replace("insecure_plain_http: true\n", ""),
        &["tls_cert_file"],
    );
    refused(
        &base().replace("127.0.0.1", "0.0.0.0"),
        &["insecure_plain_http", "loopback"],
    );
    refused(
        &(base() + "default_image: other\n"),
        &["default_image", "allowed_images"],
    );
    refused(&(base() + "log_format: xml\n"), &["log_format"]);
    refused(&(base() + "sandbox_user: \"0:0\"\n"), &["sandbox_user"]);
    refused(
        &(base() + "sandbox_user: \"root:root\"\n"),
        &["sandbox_user"],
    );
    refused(&(base() + "sandbox_user: \"1000:0\"\n"), &["sandbox_user"]);
    // Docker reads `00` as uid 0, and a bare uid runs with gid 0.
    refused(
        &(base() + "sandbox_user: \"00:00\"\n"),
        &[
            "sandbox_user",
            "line 8",
            "is 0, which is root",
            "\"65534:65534\"",
        ],
    );
    refused(
        &(base() + "sandbox_user: \"1000\"\n"),
        &["sandbox_user", "no group", "uid:gid"],
    );
    refused(
        &(base() + "sandbox_user: \"1000:root\"\n"),
        &["sandbox_user", "not a number"],
    );
    refused(
        &(base() + "sandbox_user: \"0:1000\"\n"),
        &["sandbox_user", "root"],
    );
    refused(
        &(base() + "max_connections: 1\n"),
        &["max_connections", "at least 2"],
    );
    refused(
        &(base() + "header_read_timeout_seconds: 0\n"),
        &["header_read_timeout_seconds", "between 1 and 86400"],
    );
    refused(
        &(base() + "idle_timeout_seconds: 0\n"),
        &["idle_timeout_seconds"],
    );
    refused(&(base() + "port: [1]\n"), &["line"]);
    refused(
        &(base() + "controllers:\n  - id: c2\n    hmac_secret: tooshort\n"),
        &["controllers[0].hmac_secret"],
    );
}

#[test]
fn per_controller_secrets_and_env_secret() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let other = "b".repeat(40);
    let secret_file = dir.path().join("c2.secret");
    std::fs::write(&secret_file, format!("{other}\n")).unwrap_or_else(|e| panic!("{e}"));
    set_mode(&secret_file, 0o600);
    let text = format!(
        "bind_address: \"127.0.0.1\"\ninsecure_plain_http: true\nallowed_controllers: [\"c1\"]\nallowed_images: [\"i\"]\ncontrollers:\n  - id: c2\n    hmac_secret_file: {}\n    scopes: [\"sandbox:network\"]\n",
        secret_file.display()
    );
    let path = write(&dir, &text);
    let config =
        AgentConfig::load(&path, Some(SECRET.to_string())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.controllers["c1"].secret.as_bytes(),
        SECRET.as_bytes()
    );
    assert_eq!(config.controllers["c2"].secret.as_bytes(), other.as_bytes());
    assert_eq!(
        config.controllers["c2"].scopes,
        vec!["sandbox:network".to_string()]
    );
    assert!(
        AgentConfig::load(&path, None).is_err(),
        "c1 has no secret without the env"
    );
}

#[test]
fn world_readable_secret_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = write(&dir, &base());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = AgentConfig::load(&path, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].contains("chmod 600"));
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn connection_limits_have_defaults_and_keys() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = write(&dir, &base());
    let config = AgentConfig::load(&path, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.connections.max_connections, 1024);
    assert_eq!(
        config.connections.header_read_timeout,
        Duration::from_secs(10)
    );
    assert_eq!(
        config.connections.body_read_timeout,
        Duration::from_secs(30)
    );
    assert_eq!(config.connections.idle_timeout, Duration::from_secs(60));
    assert_eq!(
        config.connections.stream_send_timeout,
        Duration::from_secs(30)
    );
    let text = base()
        + "max_connections: 7\nheader_read_timeout_seconds: 2\nbody_read_timeout_seconds: 3\nidle_timeout_seconds: 4\nstream_send_timeout_seconds: 5\n";
    let path = write(&dir, &text);
    let config = AgentConfig::load(&path, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.connections,
        ConnectionLimits {
            max_connections: 7,
            header_read_timeout: Duration::from_secs(2),
            body_read_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(4),
            stream_send_timeout: Duration::from_secs(5),
        }
    );
}

#[test]
fn secret_file_readable_by_others_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret_file = dir.path().join("hmac.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap_or_else(|e| panic!("{e}"));
    let text = base().replace(
        &format!("hmac_secret: \"{SECRET}\""),
        &format!("hmac_secret_file: {}", secret_file.display()),
    );
    for mode in [0o644, 0o640, 0o604, 0o660] {
        set_mode(&secret_file, mode);
        let fix = format!("chmod 600 {}", secret_file.display());
        refused(
            &text,
            &["hmac_secret_file", "line 4", &fix, "group or others"],
        );
    }
    set_mode(&secret_file, 0o600);
    let path = write(&dir, &text);
    let config = AgentConfig::load(&path, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.controllers["controller-1"].secret.as_bytes(),
        SECRET.as_bytes()
    );
    // A per-controller secret file is held to the same rule.
    set_mode(&secret_file, 0o644);
    let text = base()
        + &format!(
            "controllers:\n  - id: c2\n    hmac_secret_file: {}\n",
            secret_file.display()
        );
    refused(&text, &["controllers[0].hmac_secret_file", "chmod 600"]);
}

#[test]
fn an_empty_scope_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for scopes in ["[\"\"]", "[\"sandbox:network\", \" \"]", "[&anchored]"] {
        let text = format!(
            "bind_address: \"127.0.0.1\"\ninsecure_plain_http: true\nallowed_images: [\"i\"]\ncontrollers:\n  - id: c2\n    hmac_secret: \"{}\"\n    scopes: {scopes}\n",
            "b".repeat(40)
        );
        let path = write(&dir, &text);
        let error = match AgentConfig::load(&path, None) {
            Ok(_) => panic!("scopes {scopes} were accepted"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains("controllers[0].scopes") && error.contains("empty scope"),
            "{scopes}: {error}"
        );
    }
}
