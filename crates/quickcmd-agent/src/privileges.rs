//! Dropping root: once the port and the databases are open, a root-started agent becomes
//! `run_as_user`/`run_as_group`, keeping that user's supplementary groups (e.g. `docker`).

use std::ffi::CString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nix::unistd::{self, Gid, Group, Uid, User};

pub(crate) fn drop_to(
    user: Option<&str>,
    group: Option<&str>,
    owned_files: &[PathBuf],
) -> Result<()> {
    let Some(user_name) = user else {
        return Ok(());
    };
    let user = User::from_name(user_name)
        .with_context(|| format!("cannot look up run_as_user `{user_name}`"))?
        .with_context(|| {
            format!("run_as_user `{user_name}` does not exist; create it or remove the key")
        })?;
    let gid = match group {
        Some(name) => {
            Group::from_name(name)
                .with_context(|| format!("cannot look up run_as_group `{name}`"))?
                .with_context(|| format!("run_as_group `{name}` does not exist"))?
                .gid
        }
        None => user.gid,
    };
    if !Uid::effective().is_root() {
        if Uid::effective() != user.uid {
            tracing::warn!(
                run_as_user = user_name,
                "not started as root: run_as_user is ignored"
            );
        }
        return Ok(());
    }
    for file in owned_files.iter().filter(|f| f.exists()) {
        unistd::chown(file, Some(user.uid), Some(gid))
            .with_context(|| format!("cannot hand {} to {user_name}", file.display()))?;
    }
    let name = CString::new(user_name).context("run_as_user holds a NUL byte")?;
    unistd::initgroups(&name, gid).context("initgroups failed")?;
    unistd::setgid(gid).context("setgid failed")?;
    unistd::setuid(user.uid).context("setuid failed")?;
    if unistd::setuid(Uid::from_raw(0)).is_ok()
        || Uid::effective().is_root()
        || Gid::effective() != gid
    {
        bail!("privileges were not dropped");
    }
    tracing::info!(
        user = user_name,
        uid = user.uid.as_raw(),
        gid = gid.as_raw(),
        "dropped root privileges"
    );
    Ok(())
}
