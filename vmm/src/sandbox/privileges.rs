//! Giving up root once the VM is built: everything that needs it (/dev/vfio/N, locking
//! guest RAM for DMA, BAR mappings) is open and done by then, and what runs the guest
//! afterwards has no business writing sysfs or anything else root owns.

/// An account to run as: user and group ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    /// User id.
    pub uid: libc::uid_t,
    /// Group id.
    pub gid: libc::gid_t,
}

/// `nobody`'s ids where the host has no passwd entry for it (the kernel's overflow ids).
pub const NOBODY: Account = Account {
    uid: 65534,
    gid: 65534,
};

/// `--user` when none is given: `nobody`.
pub const DEFAULT_USER: &str = "nobody";

/// The account `spec` names: `USER`, `UID`, or either followed by `:GROUP`/`:GID`; a user
/// named without a group takes its passwd entry's group. `nobody` falls back to 65534
/// when the host has no passwd entry for it.
pub fn resolve(spec: &str) -> Result<Account, String> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let (uid, primary) = match user.parse::<libc::uid_t>() {
        Ok(uid) => (uid, None),
        Err(_) => match lookup_user(user) {
            Some((uid, gid)) => (uid, Some(gid)),
            None if user == DEFAULT_USER => (NOBODY.uid, Some(NOBODY.gid)),
            None => {
                return Err(format!(
                    "--user {spec}: there is no user '{user}'; give a user name, a number, or USER:GROUP"
                ))
            }
        },
    };
    let gid = match group {
        Some(group) => match group.parse::<libc::gid_t>() {
            Ok(gid) => gid,
            Err(_) => lookup_group(group)
                .ok_or_else(|| format!("--user {spec}: there is no group '{group}'"))?,
        },
        None => primary.unwrap_or(uid),
    };
    Ok(Account { uid, gid })
}

fn lookup_user(name: &str) -> Option<(libc::uid_t, libc::gid_t)> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: passwd is plain data, filled by getpwnam_r.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the strings it fills point into `buf`.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some((entry.pw_uid, entry.pw_gid))
}

fn lookup_group(name: &str) -> Option<libc::gid_t> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: group is plain data, filled by getgrnam_r.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the strings it fills point into `buf`.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(entry.gr_gid)
}

/// Become `account` for good (real, effective and saved ids, no supplementary groups),
/// which also empties every capability set; then no_new_privs. Applies to every thread
/// (glibc's set*id calls do). A no-op for the ids when not running as root.
pub fn drop_to(account: Account) -> Result<(), String> {
    let fail = |what: &str| format!("cannot {what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain id queries.
    let root = unsafe { libc::geteuid() } == 0;
    if root && account.uid != 0 {
        // SAFETY: setgroups with an empty list, then set*id with plain numbers.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(fail("drop the supplementary groups"));
            }
            if libc::setresgid(account.gid, account.gid, account.gid) != 0 {
                return Err(fail(&format!("switch to group {}", account.gid)));
            }
            if libc::setresuid(account.uid, account.uid, account.uid) != 0 {
                return Err(fail(&format!("switch to user {}", account.uid)));
            }
        }
        // SAFETY: plain id query; setuid(0) must now fail.
        if unsafe { libc::geteuid() } != account.uid || unsafe { libc::setuid(0) } == 0 {
            return Err("root could be regained after dropping it".into());
        }
    }
    // SAFETY: prctl with plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(fail("set no_new_privs"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_names_or_numbers() {
        assert_eq!(
            resolve("1000"),
            Ok(Account {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(resolve("1000:27"), Ok(Account { uid: 1000, gid: 27 }));
        assert_eq!(resolve("root"), Ok(Account { uid: 0, gid: 0 }));
        // nobody exists everywhere (a passwd entry, or the kernel's overflow ids).
        assert_eq!(resolve("nobody").map(|a| a.uid), Ok(65534));
        let unknown = resolve("no-such-user-here").unwrap_err();
        assert!(unknown.contains("no user 'no-such-user-here'"), "{unknown}");
        let group = resolve("1000:no-such-group").unwrap_err();
        assert!(group.contains("no group"), "{group}");
    }
}
