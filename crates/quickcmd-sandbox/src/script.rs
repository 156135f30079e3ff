//! The few bytes a warm pool container reads on its stdin to become one job's container:
//! `cd` to the workdir, `export` the job's environment, then `exec sh -c <command>`, so the
//! job's command ends up as PID 1 exactly as in a cold container.
//!
//! A pool container runs [`BOOTSTRAP`]: it reads the script up to a NUL byte with the shell's
//! `read` builtin, which reads a pipe one byte at a time and so never consumes a byte past the
//! NUL. Whatever follows the NUL is therefore exactly the job's stdin. Commands and env values
//! cannot contain NUL (`SandboxSpec::validate` refuses it), so the NUL cannot come early.

use crate::spec::SandboxSpec;

/// The pool container's command (`sh -c BOOTSTRAP`): read the script up to NUL, then run it.
/// Without a complete script (stdin closed early) `read` fails and nothing runs.
pub(crate) const BOOTSTRAP: &str = r#"IFS= read -r -d '' script && eval "$script""#;

/// A script longer than this is not worth reading byte by byte; such jobs take the cold path.
pub(crate) const MAX_SCRIPT_BYTES: usize = 64 * 1024;

/// `value` as one shell word that the shell reads back byte for byte: wrapped in single quotes,
/// each `'` written as `'\''`. Nothing is special inside single quotes, so `$`, backquotes,
/// `\`, newlines and globs stay literal.
pub(crate) fn shell_quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// Whether `name` can be `export`ed as is: `[A-Za-z_][A-Za-z0-9_]*`. Other names are valid
/// for the engine but not for the shell, so their jobs take the cold path.
pub(crate) fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The script for `spec`, terminated by NUL, or `None` when `spec` cannot be expressed this
/// way (an env name the shell cannot export, or a script over [`MAX_SCRIPT_BYTES`]).
/// Without job stdin the command's stdin is `/dev/null`, as in a cold container.
pub(crate) fn job_script(spec: &SandboxSpec) -> Option<Vec<u8>> {
    if !spec.env.keys().all(|name| is_shell_name(name)) {
        return None;
    }
    // `cd` sets OLDPWD and this shell raised SHLVL; undo both, so the command sees the
    // environment a cold container's `sh -c` would.
    let mut script = format!(
        "cd -- {} || exit 125\nunset OLDPWD\nexport SHLVL=$((SHLVL - 1))\n",
        shell_quote(&spec.workdir)
    );
    for (name, value) in &spec.env {
        script.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    script.push_str(&format!("exec sh -c {}", shell_quote(&spec.command)));
    if spec.stdin.is_none() {
        script.push_str(" </dev/null");
    }
    script.push('\n');
    let mut bytes = script.into_bytes();
    bytes.push(0);
    (bytes.len() <= MAX_SCRIPT_BYTES).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::*;
    use crate::spec::DEFAULT_WORKDIR;

    /// Values an attacker would pick to break out of quoting.
    const HOSTILE: &[&str] = &[
        "",
        "'",
        "''",
        "'\\''",
        "a'b",
        "$(id)",
        "`id`",
        "${PATH}",
        "\\",
        "\\'",
        "x\ny",
        "\n'; touch /tmp/pwned; echo '",
        "*",
        "-n",
        "--",
        "!",
        "\"",
        "a\"b'c$d`e\\f",
        "tab\there",
        "é ünï 😀",
        ";|&<>(){}",
    ];

    /// The sandbox image's shell is the static busybox the image is built from
    /// (`scripts/build-sandbox-image.sh` needs it on the host), so the tests run that one.
    fn busybox_sh() -> Command {
        let mut command = Command::new("busybox");
        command.arg("sh");
        command
    }

    /// Both the host's `sh` and busybox `sh` read `shell_quote(value)` back as `value`.
    #[test]
    fn quoted_values_read_back_exactly_in_a_real_shell() {
        for value in HOSTILE {
            let script = format!("printf '%s' {}", shell_quote(value));
            for mut shell in [Command::new("sh"), busybox_sh()] {
                let output = shell
                    .args(["-c", &script])
                    .output()
                    .unwrap_or_else(|err| panic!("run {shell:?}: {err}"));
                assert!(output.status.success(), "{value:?}: {output:?}");
                assert_eq!(
                    String::from_utf8_lossy(&output.stdout),
                    *value,
                    "{value:?} did not survive quoting in {shell:?}"
                );
            }
        }
    }

    #[test]
    fn quote_table() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("abc"), "'abc'");
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
        assert_eq!(shell_quote("$x"), "'$x'");
    }

    #[test]
    fn shell_names() {
        for good in ["A", "_", "a_1", "PATH", "_x9"] {
            assert!(is_shell_name(good), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "A;B", "é", "A=B", "$A"] {
            assert!(!is_shell_name(bad), "{bad}");
        }
    }

    fn spec(command: &str, env: &[(&str, &str)], stdin: Option<&[u8]>) -> SandboxSpec {
        SandboxSpec {
            job_id: "job".to_owned(),
            agent_id: "agent".to_owned(),
            image: "quickcmd-sandbox:latest".to_owned(),
            command: command.to_owned(),
            user: "65534:65534".to_owned(),
            network: false,
            cpu_limit: 1.0,
            memory_limit_bytes: 64 << 20,
            pids_limit: 64,
            timeout: Duration::from_secs(5),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            workdir: DEFAULT_WORKDIR.to_owned(),
            tmp_size_bytes: 1 << 20,
            workdir_size_bytes: 1 << 20,
            mounts: Vec::new(),
            stdin: stdin.map(<[u8]>::to_vec),
        }
    }

    /// Feeds `script` (plus `stdin_after`) to the busybox `sh -c BOOTSTRAP`, in `/` instead of
    /// the workdir, and returns (exit code, stdout).
    fn run_bootstrap(mut spec: SandboxSpec, stdin_after: &[u8]) -> (i32, String) {
        use std::io::Write;
        spec.workdir = "/".to_owned();
        let script = job_script(&spec).unwrap_or_else(|| panic!("no script for {spec:?}"));
        let mut child = busybox_sh()
            .args(["-c", BOOTSTRAP])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("spawn sh: {err}"));
        let mut input = child.stdin.take().unwrap_or_else(|| panic!("no stdin"));
        input
            .write_all(&script)
            .and_then(|()| input.write_all(stdin_after))
            .unwrap_or_else(|err| panic!("write script: {err}"));
        drop(input);
        let output = child
            .wait_with_output()
            .unwrap_or_else(|err| panic!("wait sh: {err}"));
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    #[test]
    fn script_runs_the_command_with_hostile_env_and_its_own_exit_code() {
        for value in HOSTILE {
            let (code, stdout) = run_bootstrap(
                spec("printf '%s' \"$V\"; exit 7", &[("V", value)], None),
                b"",
            );
            assert_eq!(code, 7, "{value:?}");
            assert_eq!(stdout, *value, "env value {value:?} changed on the way");
        }
    }

    #[test]
    fn hostile_command_text_is_one_argument_to_sh_c() {
        // The command is quoted as a whole: what it does is what `sh -c command` does.
        let command = "echo \"a'b\"; echo '$(id)'; exit 4";
        let (code, stdout) = run_bootstrap(spec(command, &[], None), b"");
        assert_eq!(code, 4);
        assert_eq!(stdout, "a'b\n$(id)\n");
    }

    #[test]
    fn without_stdin_the_command_reads_end_of_file() {
        let (code, stdout) = run_bootstrap(spec("wc -c", &[], None), b"not for the job");
        assert_eq!(code, 0);
        assert_eq!(stdout.trim(), "0");
    }

    #[test]
    fn with_stdin_the_command_reads_exactly_the_bytes_after_the_script() {
        let data = b"line one\n\0binary\xff\nno newline";
        let (code, stdout) =
            run_bootstrap(spec("od -An -c | tr -s ' \\n' ' '", &[], Some(data)), data);
        assert_eq!(code, 0);
        assert_eq!(
            stdout.trim(),
            "l i n e o n e \\n \\0 b i n a r y 377 \\n n o n e w l i n e"
        );
    }

    #[test]
    fn unexportable_names_and_huge_scripts_take_the_cold_path() {
        assert!(job_script(&spec("true", &[("A-B", "x")], None)).is_none());
        assert!(job_script(&spec(&"x".repeat(MAX_SCRIPT_BYTES), &[], None)).is_none());
        let script = job_script(&spec("true", &[("A", "b")], None)).unwrap_or_default();
        assert_eq!(script.last(), Some(&0));
        assert_eq!(
            script.iter().filter(|b| **b == 0).count(),
            1,
            "one NUL, at the end"
        );
    }
}
