//! The server's own image (security review F13): by default the process
//! cannot be dumped, even when its core limit is raised from outside; its
//! key memory is locked and excluded from dumps; `require_mlock` refuses
//! to start when memory cannot be locked. Real processes, real signals,
//! real core files (the kernel's `core_pattern` here writes `core` into
//! the crashing process's working directory; the test checks that first).

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{ServerProcess, free_port};

/// `CAP_IPC_LOCK` (linux/capability.h).
const CAP_IPC_LOCK: libc::c_ulong = 14;

fn config(port: u16, process: &str) -> String {
    format!(
        "[process]\n{process}\nsecret_memory_bytes = 1048576\n\n\
         [[node]]\nname = \"solo\"\nlisten = \"127.0.0.1:{port}\"\nserve = [\"etsi004-kms\"]\n\
         [node.kms_side]\nreceived_capacity_bytes = 2097152\n"
    )
}

/// Sets `resource` of this (child) process to `limit`, before exec.
fn set_limit(command: &mut Command, resource: libc::__rlimit_resource_t, limit: u64) {
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing
    // else of the parent.
    unsafe {
        command.pre_exec(move || {
            let l = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(resource, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Crashes the server with SIGABRT (Rust catches a first SIGSEGV for its
/// stack-overflow check); whether a core file appeared in `cwd`.
fn crash_and_look_for_core(mut server: ServerProcess, cwd: &Path) -> bool {
    // SAFETY: signals our own child.
    let sent = unsafe { libc::kill(server.child.id() as i32, libc::SIGABRT) };
    assert_eq!(sent, 0);
    let status = wait_exit(&mut server);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    // The kernel has written the core (if any) before the parent is told.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let found = std::fs::read_dir(cwd)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with("core"));
        if found || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The server's exit status, waiting at most 20 s (then it is killed and
/// the test fails instead of hanging).
fn wait_exit(server: &mut ServerProcess) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = server.child.kill();
            panic!("the server did not exit: {}", server.log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn core_pattern_is_a_file() -> bool {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    pattern.trim().starts_with("core")
}

#[test]
fn by_default_no_core_dump_even_with_the_limit_raised_from_outside() {
    assert!(
        core_pattern_is_a_file(),
        "this test needs kernel.core_pattern = core (a file in the working directory)"
    );
    // Control: with core_dumps = true and a core limit, a crash leaves a
    // core file, so this test can see one.
    let dir = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let port = free_port();
    let server =
        ServerProcess::spawn_with(dir.path(), port, &config(port, "core_dumps = true"), |c| {
            c.current_dir(cwd.path());
            set_limit(c, libc::RLIMIT_CORE, libc::RLIM_INFINITY);
        });
    support::wait_healthy(server.addr);
    assert!(
        crash_and_look_for_core(server, cwd.path()),
        "control: a dump was allowed"
    );

    // Default: not dumpable, core limit 0 — and raising the limit from
    // outside (prlimit) changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = ServerProcess::spawn_with(dir.path(), port, &config(port, ""), |c| {
        c.current_dir(cwd.path());
        set_limit(c, libc::RLIMIT_CORE, libc::RLIM_INFINITY);
    });
    support::wait_healthy(server.addr);
    let pid = server.child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().skip(4).take(2).all(|v| v == "0"),
        "{core}"
    );
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit on our own child with a valid limit.
    let raised = unsafe {
        libc::prlimit(
            pid as i32,
            libc::RLIMIT_CORE,
            &unlimited,
            std::ptr::null_mut(),
        )
    };
    // Raising a hard limit of 0 needs CAP_SYS_RESOURCE; where the test has
    // it, the limit rises and only the dumpable flag stands in the way.
    if raised != 0 {
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
    }
    let log = server.log_text();
    assert!(log.contains("dumpable=false"), "{log}");
    assert!(
        !crash_and_look_for_core(server, cwd.path()),
        "the server was dumpable"
    );
}

#[test]
fn key_memory_is_locked_and_left_out_of_dumps_and_the_kek_leaves_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let kek = "5c".repeat(32);
    let server = ServerProcess::spawn_with(dir.path(), port, &config(port, ""), |c| {
        c.env("KEYPIPE_KEK", &kek);
    });
    support::wait_healthy(server.addr);
    // Neither the variable nor its text is left in the environment block
    // (what /proc/PID/environ shows and a child would inherit).
    let environ = std::fs::read(format!("/proc/{}/environ", server.child.id())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains(&kek),
        "the KEK is still in the environment"
    );
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", server.child.id())).unwrap();
    // Mappings (size, VmFlags) that are locked (`lo`) and not dumped (`dd`).
    let mut protected = Vec::new();
    let mut size_kb = 0u64;
    for line in smaps.lines() {
        if let Some(rest) = line.strip_prefix("Size:") {
            size_kb = rest.trim().trim_end_matches(" kB").trim().parse().unwrap();
        }
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let flags: Vec<&str> = flags.split_whitespace().collect();
            if flags.contains(&"lo") && flags.contains(&"dd") {
                protected.push(size_kb);
            }
        }
    }
    let total: u64 = protected.iter().sum();
    // The secret heap (1 MiB) and the KMS side's received key (2 MiB).
    assert!(total >= 3 * 1024, "locked, dump-excluded kB: {protected:?}");
}

#[test]
fn require_mlock_refuses_to_start_when_memory_cannot_be_locked() {
    for (process, must_start) in [
        ("require_mlock = true", false),
        ("require_mlock = false", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut server = ServerProcess::spawn_with(dir.path(), port, &config(port, process), |c| {
            set_limit(c, libc::RLIMIT_MEMLOCK, 64 * 1024);
            // Root's CAP_IPC_LOCK ignores the limit: drop it from the
            // bounding set so the exec'd server does not get it.
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                c.pre_exec(|| {
                    if libc::geteuid() == 0
                        && libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        });
        if must_start {
            support::wait_healthy(server.addr);
            let log = server.log_text();
            assert!(log.contains("could not be locked in memory"), "{log}");
        } else {
            let status = wait_exit(&mut server);
            assert!(!status.success());
            let log = server.log_text();
            assert!(
                log.contains("cannot be locked in memory") && log.contains("RLIMIT_MEMLOCK"),
                "{log}"
            );
        }
    }
}
