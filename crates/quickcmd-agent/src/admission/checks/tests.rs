use super::*;
use quickcmd_protocol::SandboxRequest;

fn config(extra: &str) -> AgentConfig {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("c.yaml");
    let text = format!(
        "bind_address: \"127.0.0.1\"\ninsecure_plain_http: true\nhmac_secret: \"{}\"\nallowed_controllers: [\"c1\"]\nallowed_images: [\"img:1\", \"img:2\"]\nmax_timeout_seconds: 60\ndefault_timeout_seconds: 30\nmounts:\n  - {{name: logs, source: /var/log, target: /logs}}\ncontrollers:\n  - id: net\n    scopes: [\"sandbox:network\", \"mount:logs\", \"deploy\"]\n{extra}",
        "k".repeat(32)
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    AgentConfig::load(&path, None).unwrap_or_else(|e| panic!("{e}"))
}

fn payload(sandbox: Option<SandboxRequest>, scopes: Option<Vec<&str>>) -> JobPayload {
    JobPayload {
        job_id: "j".into(),
        prompt: String::new(),
        command: "true".into(),
        candidate_metadata: None,
        plugin_metadata: None,
        required_scopes: scopes.map(|s| s.into_iter().map(str::to_string).collect()),
        snapshot_metadata: String::new(),
        ttl: 1_000_600,
        timestamp: 1_000_000,
        controller_id: "c1".into(),
        sandbox,
        stdin: None,
        requested_by: None,
    }
}

fn code(result: Result<ResolvedSandbox, Refusal>) -> Option<ErrorCode> {
    result.err().map(|r| r.code)
}

#[test]
fn clock_window_both_ways_and_lifetime() {
    let config = config("");
    let now = 1_000_000;
    let mut p = payload(None, None);
    assert_eq!(check_clock(&p, now, &config), Ok(()));
    p.ttl = now;
    assert_eq!(
        check_clock(&p, now, &config).map_err(|r| r.code),
        Err(ErrorCode::JobExpired)
    );
    p.ttl = now + 100;
    p.timestamp = now - 301;
    assert_eq!(
        check_clock(&p, now, &config).map_err(|r| r.code),
        Err(ErrorCode::JobTooOld)
    );
    p.timestamp = now + 301;
    p.ttl = now + 400;
    assert_eq!(
        check_clock(&p, now, &config).map_err(|r| r.code),
        Err(ErrorCode::TimestampInFuture)
    );
    p.timestamp = now;
    p.ttl = now + 3601;
    assert_eq!(
        check_clock(&p, now, &config).map_err(|r| r.code),
        Err(ErrorCode::TtlTooLong)
    );
}

#[test]
fn scopes_images_and_caps() {
    let config = config("");
    let plain = config
        .controller("c1")
        .cloned()
        .unwrap_or_else(|| panic!("c1"));
    let net = config
        .controller("net")
        .cloned()
        .unwrap_or_else(|| panic!("net"));
    let with = |s: SandboxRequest| payload(Some(s), None);

    let resolved =
        resolve_sandbox(&payload(None, None), &plain, &config).unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(resolved.image, "img:1");
    assert!(!resolved.network);

    assert_eq!(
        code(resolve_sandbox(
            &payload(None, Some(vec!["deploy"])),
            &plain,
            &config
        )),
        Some(ErrorCode::InsufficientScopes)
    );
    assert_eq!(
        code(resolve_sandbox(
            &payload(None, Some(vec!["deploy"])),
            &net,
            &config
        )),
        None
    );
    let network = SandboxRequest {
        network: Some(true),
        ..Default::default()
    };
    assert_eq!(
        code(resolve_sandbox(&with(network.clone()), &plain, &config)),
        Some(ErrorCode::InsufficientScopes)
    );
    assert_eq!(code(resolve_sandbox(&with(network), &net, &config)), None);
    let mount = SandboxRequest {
        mounts: Some(vec!["logs".into()]),
        ..Default::default()
    };
    assert_eq!(
        code(resolve_sandbox(&with(mount.clone()), &plain, &config)),
        Some(ErrorCode::InsufficientScopes)
    );
    assert_eq!(code(resolve_sandbox(&with(mount), &net, &config)), None);
    let unknown_mount = SandboxRequest {
        mounts: Some(vec!["etc".into()]),
        ..Default::default()
    };
    assert_eq!(
        code(resolve_sandbox(&with(unknown_mount), &net, &config)),
        Some(ErrorCode::InsufficientScopes)
    );
    let image = SandboxRequest {
        image: Some("evil:latest".into()),
        ..Default::default()
    };
    assert_eq!(
        code(resolve_sandbox(&with(image), &net, &config)),
        Some(ErrorCode::ImageNotAllowed)
    );
    let image = SandboxRequest {
        image: Some("img:2".into()),
        ..Default::default()
    };
    assert_eq!(code(resolve_sandbox(&with(image), &net, &config)), None);
    for over in [
        SandboxRequest {
            timeout_seconds: Some(61),
            ..Default::default()
        },
        SandboxRequest {
            cpu_limit: Some(2.5),
            ..Default::default()
        },
        SandboxRequest {
            memory_limit: Some(2 << 30),
            ..Default::default()
        },
    ] {
        assert_eq!(
            code(resolve_sandbox(&with(over), &net, &config)),
            Some(ErrorCode::SandboxLimitExceeded)
        );
    }
    for bad in [
        SandboxRequest {
            workdir: Some("/proc/self".into()),
            ..Default::default()
        },
        SandboxRequest {
            workdir: Some("/".into()),
            ..Default::default()
        },
        SandboxRequest {
            workdir: Some("relative".into()),
            ..Default::default()
        },
        SandboxRequest {
            env: Some([("A=B".to_string(), "x".to_string())].into()),
            ..Default::default()
        },
        SandboxRequest {
            timeout_seconds: Some(0),
            ..Default::default()
        },
    ] {
        assert_eq!(
            code(resolve_sandbox(&with(bad), &net, &config)),
            Some(ErrorCode::InvalidPayload)
        );
    }
}

#[test]
fn values_the_sandbox_refuses_are_refused_at_admission() {
    let config = config("");
    let grant = config.controller("c1").expect("c1 is configured");
    let refused = |sandbox: SandboxRequest, command: &str| {
        let mut p = payload(Some(sandbox), None);
        p.command = command.into();
        let resolved = resolve_sandbox(&p, grant, &config).map_err(|r| r.message)?;
        let job = QueuedJob {
            job_id: p.job_id.clone(),
            controller_id: p.controller_id.clone(),
            command: p.command.clone(),
            ttl: p.ttl,
            sandbox: resolved,
            stdin: None,
            requested_by: None,
        };
        check_spec(&config, &job).map_err(|r| {
            assert_eq!(r.code, ErrorCode::InvalidPayload, "{}", r.message);
            r.message
        })
    };
    let cases: Vec<(SandboxRequest, &str, &str)> = vec![
        (
            SandboxRequest {
                cpu_limit: Some(1e-300),
                ..Default::default()
            },
            "true",
            "cpu_limit",
        ),
        (
            SandboxRequest {
                workdir: Some("//proc".into()),
                ..Default::default()
            },
            "true",
            "not normalised",
        ),
        (
            SandboxRequest {
                workdir: Some("/work,size=0".into()),
                ..Default::default()
            },
            "true",
            "','",
        ),
        (SandboxRequest::default(), "echo a\0b", "NUL"),
    ];
    for (sandbox, command, expected) in cases {
        let message = refused(sandbox.clone(), command).expect_err("must be refused");
        assert!(
            message.contains(expected),
            "{sandbox:?}: {message:?} lacks {expected:?}"
        );
    }
    assert_eq!(refused(SandboxRequest::default(), "true"), Ok(()));
}
