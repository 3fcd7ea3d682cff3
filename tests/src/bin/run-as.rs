//! `run-as UID GID PROGRAM ARGS...`: run a program as an ordinary user, with no
//! supplementary groups — how the lab shows what minivmm says to a user without permission
//! (busybox in L1 has no tool that changes the user id).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let (Some(uid), Some(gid), Some(_)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: run-as UID GID PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let parse = |s: &std::ffi::OsStr| s.to_str().and_then(|s| s.parse::<u32>().ok());
    let (Some(uid), Some(gid)) = (parse(uid), parse(gid)) else {
        eprintln!("run-as: UID and GID must be numbers");
        std::process::exit(2);
    };
    let argv: Vec<CString> = args
        .iter()
        .skip(2)
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // SAFETY: plain syscalls on this process; `pointers` is a null-terminated array of
    // pointers into `argv`, which outlives the exec call.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            eprintln!("run-as: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        if let Some(program) = pointers.first() {
            libc::execvp(*program, pointers.as_ptr());
        }
    }
    eprintln!(
        "run-as: cannot run the program: {}",
        std::io::Error::last_os_error()
    );
    std::process::exit(127);
}
