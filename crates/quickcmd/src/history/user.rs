//! Who ran us, as the history records it.

/// The local user running us, for the history: `$USER` (noting `sudo`), else the uid's
/// name from `/etc/passwd`, else `uid:N`.
pub fn local_user() -> String {
    let from_env = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty());
    let user = from_env.unwrap_or_else(user_from_uid);
    match std::env::var("SUDO_USER") {
        Ok(sudo_user) if !sudo_user.is_empty() && sudo_user != user => {
            format!("{user} (sudo by {sudo_user})")
        }
        _ => user,
    }
}

fn user_from_uid() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().next().map(str::to_string))
        });
    let Some(uid) = uid else {
        return "unknown".to_string();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let _password = fields.next()?;
                (fields.next()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid:{uid}"))
}

/// Who jobs are signed for by default (protocol v1.1 `requested_by`): `<login>@<hostname>`,
/// the login without the `sudo` note, cut to what the protocol allows.
pub fn default_requested_by() -> String {
    let login = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(user_from_uid);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    let text: String = format!("{login}@{host}")
        .chars()
        .filter(|c| !c.is_control())
        .take(quickcmd_protocol::MAX_REQUESTED_BY_CHARS)
        .collect();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_requested_by_is_valid_login_at_host() {
        let text = default_requested_by();
        assert!(text.contains('@'), "{text}");
        assert!(quickcmd_protocol::is_valid_requested_by(&text), "{text:?}");
    }
}
