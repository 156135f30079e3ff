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
