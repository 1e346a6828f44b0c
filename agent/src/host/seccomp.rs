//! The seccomp profile of every dyno (and build dyno): an allow-list, generated from the one
//! table [`SYSCALLS`].
//!
//! Why this file is long (past the ~800 lines of production code the house keeps to): half of
//! it is that table, one system call a line with the reason for its rule, and the allow-list
//! is safer read in one place than split across files.
//!
//! # Where the table comes from
//!
//! The allowed set is the one Docker's and Podman's default profiles give a container without
//! extra capabilities (moby `profiles/seccomp/default.json`, containers/common
//! `pkg/seccomp/seccomp.json`), for x86-64 with its 32-bit (`x86`) and `x32` ABIs, minus the
//! calls those profiles allow only because a debugger needs them (see `ptrace` below). A call
//! that is not in the table fails with `ENOSYS`, as if the kernel were older: libc and
//! language runtimes fall back when a new call is missing (glibc's `clone3` → `clone`,
//! `faccessat2` → `faccessat`), whereas `EPERM` for an unknown call breaks them (the
//! `faccessat2` breakage of older Docker profiles). Calls the table refuses on purpose fail with
//! `EPERM` ("not allowed", which programs report as such), each with the reason in the table.
//!
//! # Why a dyno must not nest namespaces
//!
//! A new user namespace gives its creator every capability *inside* it, and with a new network
//! or mount namespace under it that reaches code (nf_tables, packet sockets, filesystem
//! mounts) that the kernel otherwise keeps for root: the usual first step of a kernel
//! privilege escalation from a container. So `unshare`, `setns` and `clone3` are refused, and
//! `clone` only with no `CLONE_NEW*` flag: plain `fork`, `vfork` and threads still work.
//!
//! # How the `clone` rule is written
//!
//! Docker allows `clone` when `flags & CLONE_NEW_MASK == 0` (`SCMP_CMP_MASKED_EQ`,
//! `value` = the mask, `valueTwo` = 0). libcontainer 0.7 reads the two operands of
//! `SCMP_CMP_MASKED_EQ` the other way round from runc and crun (`valueTwo` as the mask), so
//! that rule would refuse every `clone` under one of them. This profile only uses forms every
//! runtime reads alike: one `EPERM` rule per namespace flag `F` matching `flags & F == F`
//! (`value` = `valueTwo` = `F`), and an allow rule matching any flags (`flags >= 0`); libseccomp
//! checks the masked rules before the catch-all one (the isolation test
//! `agent/tests/isolation_syscalls.rs` proves it on the real kernel, so a libseccomp that
//! ordered them otherwise fails there, not in production). The same spec thus means the same
//! under libcontainer and under crun/runc (`bench/start.py` runs it under both).
//!
//! # Compiled once per host, not once per dyno
//!
//! libcontainer compiles a spec's `linux.seccomp` with libseccomp in every container's init:
//! for this profile that was most of what containment added to a dyno's start (about 3 ms of
//! 4, BENCHMARKS.md). The shim instead takes the profile out of the spec it hands to
//! libcontainer, gets the program from [`Filter::cached`] (compiled by libseccomp once per
//! profile and kept under the host's state directory, keyed by the profile's digest) and
//! [`Filter::install`]s it as the last step before the dyno's command is executed. The spec
//! that other runtimes get (`run --print-spec`) still carries the profile.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use libcontainer::oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What the profile does with one syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Allowed with any arguments.
    Allow,
    /// Allowed when argument 0 is one of these values, else `ENOSYS` (the default).
    AllowArg0(&'static [u64]),
    /// Allowed unless argument 0 (clone's flags) has one of these bits, each refused with
    /// `EPERM`.
    AllowWithoutFlags(&'static [u64]),
    /// Refused with `EPERM`, for the reason given.
    Refuse(&'static str),
    /// Refused with `ENOSYS`, so that callers fall back to an older call, for the reason given.
    /// That is the profile's default action, so the call is simply left out of the profile
    /// (libcontainer drops, with a warning, a rule whose action is the default one).
    Absent(&'static str),
}

/// `clone` flags that make a new namespace (`linux/sched.h`), each refused. `CLONE_NEWTIME`
/// (0x80) is not one of them: `clone` cannot make a time namespace (that bit is part of the
/// exit signal there); `unshare` and `clone3`, which can, are refused whole.
pub const CLONE_NEW_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// `personality` values Docker allows: `PER_LINUX`, `PER_LINUX32`, `UNAME26`, both of the
/// last, and the query `0xffffffff`. Others (e.g. `ADDR_NO_RANDOMIZE`, `READ_IMPLIES_EXEC`)
/// would weaken the dyno's own memory protections.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x0002_0000, 0x0002_0008, 0xffff_ffff];

const NAMESPACES: &str = "a new or another namespace: privileges inside a nested user namespace";
const MOUNTS: &str = "mounts change the dyno's filesystem view; the runtime sets it up";
const KEYRING: &str = "kernel keyrings are not namespaced: keys of other dynos and the host";
const TRACE: &str = "reading or changing another process (Heroku offers no ptrace either); \
                     a large kernel surface for no app's need";
const HOST_CLOCK: &str = "the clock is the host's";
const HOST_KERNEL: &str = "changes the host's kernel, devices or power";
const HOST_FS: &str = "host-wide filesystem state (quotas, swap, accounting, handles)";
const IO_URING: &str = "io_uring bypasses seccomp for the operations it runs and has been a \
                        steady source of kernel exploits (Docker and Podman refuse it too)";

/// The one table of the profile, sorted by name. Names the kernel of an architecture lacks
/// (the `*32`/`*64` variants, `socketcall`, ...) are resolved per architecture by libseccomp.
pub const SYSCALLS: &[(&str, Rule)] = &[
    ("_llseek", Rule::Allow),
    ("_newselect", Rule::Allow),
    ("accept", Rule::Allow),
    ("accept4", Rule::Allow),
    ("access", Rule::Allow),
    ("acct", Rule::Refuse(HOST_FS)),
    ("add_key", Rule::Refuse(KEYRING)),
    ("adjtimex", Rule::Allow),
    ("alarm", Rule::Allow),
    ("arch_prctl", Rule::Allow),
    ("bind", Rule::Allow),
    (
        "bpf",
        Rule::Refuse("BPF programs run in the kernel: verifier bugs are root exploits"),
    ),
    ("brk", Rule::Allow),
    ("capget", Rule::Allow),
    ("capset", Rule::Allow),
    ("chdir", Rule::Allow),
    ("chmod", Rule::Allow),
    ("chown", Rule::Allow),
    ("chown32", Rule::Allow),
    ("chroot", Rule::Refuse(MOUNTS)),
    ("clock_adjtime", Rule::Refuse(HOST_CLOCK)),
    ("clock_adjtime64", Rule::Refuse(HOST_CLOCK)),
    ("clock_getres", Rule::Allow),
    ("clock_getres_time64", Rule::Allow),
    ("clock_gettime", Rule::Allow),
    ("clock_gettime64", Rule::Allow),
    ("clock_nanosleep", Rule::Allow),
    ("clock_nanosleep_time64", Rule::Allow),
    ("clock_settime", Rule::Refuse(HOST_CLOCK)),
    ("clock_settime64", Rule::Refuse(HOST_CLOCK)),
    ("clone", Rule::AllowWithoutFlags(CLONE_NEW_FLAGS)),
    (
        "clone3",
        Rule::Absent("its flags are in memory, out of seccomp's reach; libc falls back to clone"),
    ),
    ("close", Rule::Allow),
    ("close_range", Rule::Allow),
    ("connect", Rule::Allow),
    ("copy_file_range", Rule::Allow),
    ("creat", Rule::Allow),
    ("delete_module", Rule::Refuse(HOST_KERNEL)),
    ("dup", Rule::Allow),
    ("dup2", Rule::Allow),
    ("dup3", Rule::Allow),
    ("epoll_create", Rule::Allow),
    ("epoll_create1", Rule::Allow),
    ("epoll_ctl", Rule::Allow),
    ("epoll_ctl_old", Rule::Allow),
    ("epoll_pwait", Rule::Allow),
    ("epoll_pwait2", Rule::Allow),
    ("epoll_wait", Rule::Allow),
    ("epoll_wait_old", Rule::Allow),
    ("eventfd", Rule::Allow),
    ("eventfd2", Rule::Allow),
    ("execve", Rule::Allow),
    ("execveat", Rule::Allow),
    ("exit", Rule::Allow),
    ("exit_group", Rule::Allow),
    ("faccessat", Rule::Allow),
    ("faccessat2", Rule::Allow),
    ("fadvise64", Rule::Allow),
    ("fadvise64_64", Rule::Allow),
    ("fallocate", Rule::Allow),
    (
        "fanotify_init",
        Rule::Refuse("watches whole filesystems, the host's included"),
    ),
    ("fanotify_mark", Rule::Allow),
    ("fchdir", Rule::Allow),
    ("fchmod", Rule::Allow),
    ("fchmodat", Rule::Allow),
    ("fchown", Rule::Allow),
    ("fchown32", Rule::Allow),
    ("fchownat", Rule::Allow),
    ("fcntl", Rule::Allow),
    ("fcntl64", Rule::Allow),
    ("fdatasync", Rule::Allow),
    ("fgetxattr", Rule::Allow),
    ("finit_module", Rule::Refuse(HOST_KERNEL)),
    ("flistxattr", Rule::Allow),
    ("flock", Rule::Allow),
    ("fork", Rule::Allow),
    ("fremovexattr", Rule::Allow),
    ("fsconfig", Rule::Refuse(MOUNTS)),
    ("fsetxattr", Rule::Allow),
    ("fsmount", Rule::Refuse(MOUNTS)),
    ("fsopen", Rule::Refuse(MOUNTS)),
    ("fspick", Rule::Refuse(MOUNTS)),
    ("fstat", Rule::Allow),
    ("fstat64", Rule::Allow),
    ("fstatat64", Rule::Allow),
    ("fstatfs", Rule::Allow),
    ("fstatfs64", Rule::Allow),
    ("fsync", Rule::Allow),
    ("ftruncate", Rule::Allow),
    ("ftruncate64", Rule::Allow),
    ("futex", Rule::Allow),
    ("futex_time64", Rule::Allow),
    ("futex_waitv", Rule::Allow),
    ("futimesat", Rule::Allow),
    ("get_robust_list", Rule::Allow),
    ("get_thread_area", Rule::Allow),
    ("getcpu", Rule::Allow),
    ("getcwd", Rule::Allow),
    ("getdents", Rule::Allow),
    ("getdents64", Rule::Allow),
    ("getegid", Rule::Allow),
    ("getegid32", Rule::Allow),
    ("geteuid", Rule::Allow),
    ("geteuid32", Rule::Allow),
    ("getgid", Rule::Allow),
    ("getgid32", Rule::Allow),
    ("getgroups", Rule::Allow),
    ("getgroups32", Rule::Allow),
    ("getitimer", Rule::Allow),
    ("getpeername", Rule::Allow),
    ("getpgid", Rule::Allow),
    ("getpgrp", Rule::Allow),
    ("getpid", Rule::Allow),
    ("getppid", Rule::Allow),
    ("getpriority", Rule::Allow),
    ("getrandom", Rule::Allow),
    ("getresgid", Rule::Allow),
    ("getresgid32", Rule::Allow),
    ("getresuid", Rule::Allow),
    ("getresuid32", Rule::Allow),
    ("getrlimit", Rule::Allow),
    ("getrusage", Rule::Allow),
    ("getsid", Rule::Allow),
    ("getsockname", Rule::Allow),
    ("getsockopt", Rule::Allow),
    ("gettid", Rule::Allow),
    ("gettimeofday", Rule::Allow),
    ("getuid", Rule::Allow),
    ("getuid32", Rule::Allow),
    ("getxattr", Rule::Allow),
    ("init_module", Rule::Refuse(HOST_KERNEL)),
    ("inotify_add_watch", Rule::Allow),
    ("inotify_init", Rule::Allow),
    ("inotify_init1", Rule::Allow),
    ("inotify_rm_watch", Rule::Allow),
    ("io_cancel", Rule::Allow),
    ("io_destroy", Rule::Allow),
    ("io_getevents", Rule::Allow),
    ("io_pgetevents", Rule::Allow),
    ("io_pgetevents_time64", Rule::Allow),
    ("io_setup", Rule::Allow),
    ("io_submit", Rule::Allow),
    ("io_uring_enter", Rule::Refuse(IO_URING)),
    ("io_uring_register", Rule::Refuse(IO_URING)),
    ("io_uring_setup", Rule::Refuse(IO_URING)),
    ("ioctl", Rule::Allow),
    ("ioperm", Rule::Refuse(HOST_KERNEL)),
    ("iopl", Rule::Refuse(HOST_KERNEL)),
    ("ioprio_get", Rule::Allow),
    ("ioprio_set", Rule::Allow),
    ("ipc", Rule::Allow),
    ("kcmp", Rule::Refuse(TRACE)),
    ("kexec_file_load", Rule::Refuse(HOST_KERNEL)),
    ("kexec_load", Rule::Refuse(HOST_KERNEL)),
    ("keyctl", Rule::Refuse(KEYRING)),
    ("kill", Rule::Allow),
    ("landlock_add_rule", Rule::Allow),
    ("landlock_create_ruleset", Rule::Allow),
    ("landlock_restrict_self", Rule::Allow),
    ("lchown", Rule::Allow),
    ("lchown32", Rule::Allow),
    ("lgetxattr", Rule::Allow),
    ("link", Rule::Allow),
    ("linkat", Rule::Allow),
    ("listen", Rule::Allow),
    ("listxattr", Rule::Allow),
    ("llistxattr", Rule::Allow),
    ("lookup_dcookie", Rule::Refuse(HOST_KERNEL)),
    ("lremovexattr", Rule::Allow),
    ("lseek", Rule::Allow),
    ("lsetxattr", Rule::Allow),
    ("lstat", Rule::Allow),
    ("lstat64", Rule::Allow),
    ("madvise", Rule::Allow),
    ("membarrier", Rule::Allow),
    ("memfd_create", Rule::Allow),
    ("memfd_secret", Rule::Allow),
    ("mincore", Rule::Allow),
    ("mkdir", Rule::Allow),
    ("mkdirat", Rule::Allow),
    ("mknod", Rule::Allow),
    ("mknodat", Rule::Allow),
    ("mlock", Rule::Allow),
    ("mlock2", Rule::Allow),
    ("mlockall", Rule::Allow),
    ("mmap", Rule::Allow),
    ("mmap2", Rule::Allow),
    (
        "modify_ldt",
        Rule::Refuse("16-bit segments: only old emulators need them, a known kernel attack path"),
    ),
    ("mount", Rule::Refuse(MOUNTS)),
    ("mount_setattr", Rule::Refuse(MOUNTS)),
    ("move_mount", Rule::Refuse(MOUNTS)),
    ("mprotect", Rule::Allow),
    ("mq_getsetattr", Rule::Allow),
    ("mq_notify", Rule::Allow),
    ("mq_open", Rule::Allow),
    ("mq_timedreceive", Rule::Allow),
    ("mq_timedreceive_time64", Rule::Allow),
    ("mq_timedsend", Rule::Allow),
    ("mq_timedsend_time64", Rule::Allow),
    ("mq_unlink", Rule::Allow),
    ("mremap", Rule::Allow),
    ("msgctl", Rule::Allow),
    ("msgget", Rule::Allow),
    ("msgrcv", Rule::Allow),
    ("msgsnd", Rule::Allow),
    ("msync", Rule::Allow),
    ("munlock", Rule::Allow),
    ("munlockall", Rule::Allow),
    ("munmap", Rule::Allow),
    ("name_to_handle_at", Rule::Refuse(HOST_FS)),
    ("nanosleep", Rule::Allow),
    ("newfstatat", Rule::Allow),
    ("open", Rule::Allow),
    ("open_by_handle_at", Rule::Refuse(HOST_FS)),
    ("open_tree", Rule::Refuse(MOUNTS)),
    ("openat", Rule::Allow),
    ("openat2", Rule::Allow),
    ("pause", Rule::Allow),
    (
        "perf_event_open",
        Rule::Refuse("reads the host's performance counters; a frequent kernel exploit path"),
    ),
    ("personality", Rule::AllowArg0(PERSONALITIES)),
    ("pidfd_getfd", Rule::Refuse(TRACE)),
    ("pidfd_open", Rule::Allow),
    ("pidfd_send_signal", Rule::Allow),
    ("pipe", Rule::Allow),
    ("pipe2", Rule::Allow),
    ("pivot_root", Rule::Refuse(MOUNTS)),
    ("pkey_alloc", Rule::Allow),
    ("pkey_free", Rule::Allow),
    ("pkey_mprotect", Rule::Allow),
    ("poll", Rule::Allow),
    ("ppoll", Rule::Allow),
    ("ppoll_time64", Rule::Allow),
    ("prctl", Rule::Allow),
    ("pread64", Rule::Allow),
    ("preadv", Rule::Allow),
    ("preadv2", Rule::Allow),
    ("prlimit64", Rule::Allow),
    ("process_madvise", Rule::Refuse(TRACE)),
    ("process_mrelease", Rule::Allow),
    ("process_vm_readv", Rule::Refuse(TRACE)),
    ("process_vm_writev", Rule::Refuse(TRACE)),
    ("pselect6", Rule::Allow),
    ("pselect6_time64", Rule::Allow),
    ("ptrace", Rule::Refuse(TRACE)),
    ("pwrite64", Rule::Allow),
    ("pwritev", Rule::Allow),
    ("pwritev2", Rule::Allow),
    ("quotactl", Rule::Refuse(HOST_FS)),
    ("quotactl_fd", Rule::Refuse(HOST_FS)),
    ("read", Rule::Allow),
    ("readahead", Rule::Allow),
    ("readlink", Rule::Allow),
    ("readlinkat", Rule::Allow),
    ("readv", Rule::Allow),
    ("reboot", Rule::Refuse(HOST_KERNEL)),
    ("recv", Rule::Allow),
    ("recvfrom", Rule::Allow),
    ("recvmmsg", Rule::Allow),
    ("recvmmsg_time64", Rule::Allow),
    ("recvmsg", Rule::Allow),
    ("remap_file_pages", Rule::Allow),
    ("removexattr", Rule::Allow),
    ("rename", Rule::Allow),
    ("renameat", Rule::Allow),
    ("renameat2", Rule::Allow),
    ("request_key", Rule::Refuse(KEYRING)),
    ("restart_syscall", Rule::Allow),
    ("rmdir", Rule::Allow),
    ("rseq", Rule::Allow),
    ("rt_sigaction", Rule::Allow),
    ("rt_sigpending", Rule::Allow),
    ("rt_sigprocmask", Rule::Allow),
    ("rt_sigqueueinfo", Rule::Allow),
    ("rt_sigreturn", Rule::Allow),
    ("rt_sigsuspend", Rule::Allow),
    ("rt_sigtimedwait", Rule::Allow),
    ("rt_sigtimedwait_time64", Rule::Allow),
    ("rt_tgsigqueueinfo", Rule::Allow),
    ("sched_get_priority_max", Rule::Allow),
    ("sched_get_priority_min", Rule::Allow),
    ("sched_getaffinity", Rule::Allow),
    ("sched_getattr", Rule::Allow),
    ("sched_getparam", Rule::Allow),
    ("sched_getscheduler", Rule::Allow),
    ("sched_rr_get_interval", Rule::Allow),
    ("sched_rr_get_interval_time64", Rule::Allow),
    ("sched_setaffinity", Rule::Allow),
    ("sched_setattr", Rule::Allow),
    ("sched_setparam", Rule::Allow),
    ("sched_setscheduler", Rule::Allow),
    ("sched_yield", Rule::Allow),
    ("seccomp", Rule::Allow),
    ("select", Rule::Allow),
    ("semctl", Rule::Allow),
    ("semget", Rule::Allow),
    ("semop", Rule::Allow),
    ("semtimedop", Rule::Allow),
    ("semtimedop_time64", Rule::Allow),
    ("send", Rule::Allow),
    ("sendfile", Rule::Allow),
    ("sendfile64", Rule::Allow),
    ("sendmmsg", Rule::Allow),
    ("sendmsg", Rule::Allow),
    ("sendto", Rule::Allow),
    ("set_robust_list", Rule::Allow),
    ("set_thread_area", Rule::Allow),
    ("set_tid_address", Rule::Allow),
    ("setdomainname", Rule::Refuse(NAMESPACES)),
    ("setfsgid", Rule::Allow),
    ("setfsgid32", Rule::Allow),
    ("setfsuid", Rule::Allow),
    ("setfsuid32", Rule::Allow),
    ("setgid", Rule::Allow),
    ("setgid32", Rule::Allow),
    ("setgroups", Rule::Allow),
    ("setgroups32", Rule::Allow),
    ("sethostname", Rule::Refuse(NAMESPACES)),
    ("setitimer", Rule::Allow),
    ("setns", Rule::Refuse(NAMESPACES)),
    ("setpgid", Rule::Allow),
    ("setpriority", Rule::Allow),
    ("setregid", Rule::Allow),
    ("setregid32", Rule::Allow),
    ("setresgid", Rule::Allow),
    ("setresgid32", Rule::Allow),
    ("setresuid", Rule::Allow),
    ("setresuid32", Rule::Allow),
    ("setreuid", Rule::Allow),
    ("setreuid32", Rule::Allow),
    ("setrlimit", Rule::Allow),
    ("setsid", Rule::Allow),
    ("setsockopt", Rule::Allow),
    ("settimeofday", Rule::Refuse(HOST_CLOCK)),
    ("setuid", Rule::Allow),
    ("setuid32", Rule::Allow),
    ("setxattr", Rule::Allow),
    ("shmat", Rule::Allow),
    ("shmctl", Rule::Allow),
    ("shmdt", Rule::Allow),
    ("shmget", Rule::Allow),
    ("shutdown", Rule::Allow),
    ("sigaltstack", Rule::Allow),
    ("signalfd", Rule::Allow),
    ("signalfd4", Rule::Allow),
    ("sigprocmask", Rule::Allow),
    ("sigreturn", Rule::Allow),
    ("socket", Rule::Allow),
    ("socketcall", Rule::Allow),
    ("socketpair", Rule::Allow),
    ("splice", Rule::Allow),
    ("stat", Rule::Allow),
    ("stat64", Rule::Allow),
    ("statfs", Rule::Allow),
    ("statfs64", Rule::Allow),
    ("statx", Rule::Allow),
    ("stime", Rule::Refuse(HOST_CLOCK)),
    ("swapoff", Rule::Refuse(HOST_FS)),
    ("swapon", Rule::Refuse(HOST_FS)),
    ("symlink", Rule::Allow),
    ("symlinkat", Rule::Allow),
    ("sync", Rule::Allow),
    ("sync_file_range", Rule::Allow),
    ("syncfs", Rule::Allow),
    ("sysinfo", Rule::Allow),
    ("syslog", Rule::Refuse("the host kernel's log")),
    ("tee", Rule::Allow),
    ("tgkill", Rule::Allow),
    ("time", Rule::Allow),
    ("timer_create", Rule::Allow),
    ("timer_delete", Rule::Allow),
    ("timer_getoverrun", Rule::Allow),
    ("timer_gettime", Rule::Allow),
    ("timer_gettime64", Rule::Allow),
    ("timer_settime", Rule::Allow),
    ("timer_settime64", Rule::Allow),
    ("timerfd_create", Rule::Allow),
    ("timerfd_gettime", Rule::Allow),
    ("timerfd_gettime64", Rule::Allow),
    ("timerfd_settime", Rule::Allow),
    ("timerfd_settime64", Rule::Allow),
    ("times", Rule::Allow),
    ("tkill", Rule::Allow),
    ("truncate", Rule::Allow),
    ("truncate64", Rule::Allow),
    ("ugetrlimit", Rule::Allow),
    ("umask", Rule::Allow),
    ("umount", Rule::Refuse(MOUNTS)),
    ("umount2", Rule::Refuse(MOUNTS)),
    ("uname", Rule::Allow),
    ("unlink", Rule::Allow),
    ("unlinkat", Rule::Allow),
    ("unshare", Rule::Refuse(NAMESPACES)),
    (
        "userfaultfd",
        Rule::Refuse("stalls kernel code at will: the tool of most kernel race exploits"),
    ),
    ("utime", Rule::Allow),
    ("utimensat", Rule::Allow),
    ("utimensat_time64", Rule::Allow),
    ("utimes", Rule::Allow),
    ("vfork", Rule::Allow),
    ("vhangup", Rule::Refuse(HOST_KERNEL)),
    ("vmsplice", Rule::Allow),
    ("wait4", Rule::Allow),
    ("waitid", Rule::Allow),
    ("waitpid", Rule::Allow),
    ("write", Rule::Allow),
    ("writev", Rule::Allow),
];

/// The architectures the filter covers: the host's own ABI only. A syscall made through a
/// compatibility ABI (a 32-bit program, `int 0x80`, x32) matches no architecture of the
/// filter, and libseccomp's bad-architecture action kills the process, so those syscall
/// tables are closed rather than filtered. Heroku's stacks are 64-bit only; and every
/// architecture listed is compiled into the filter at each dyno start: the three x86 ABIs
/// made a 1153-instruction program that took about 12 ms of the start to build, one ABI is
/// a third of that (BENCHMARKS.md).
fn architectures() -> &'static [&'static str] {
    if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64"]
    } else {
        &["SCMP_ARCH_X86_64"]
    }
}

/// The OCI `linux.seccomp` object of a dyno, from [`SYSCALLS`].
pub fn profile() -> Value {
    let eperm = libc::EPERM;
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    let mut rules = Vec::new();
    for &(name, rule) in SYSCALLS {
        match rule {
            Rule::Allow => allowed.push(name),
            Rule::Refuse(_) => refused.push(name),
            Rule::Absent(_) => {}
            Rule::AllowArg0(values) => {
                // Several comparisons of one argument are alternatives (runc, crun and
                // libcontainer each add them as separate rules).
                let args: Vec<Value> = values
                    .iter()
                    .map(|v| json!({ "index": 0, "value": v, "op": "SCMP_CMP_EQ" }))
                    .collect();
                rules.push(json!({ "names": [name], "action": "SCMP_ACT_ALLOW", "args": args }));
            }
            Rule::AllowWithoutFlags(flags) => {
                let args: Vec<Value> = flags
                    .iter()
                    .map(|f| {
                        json!({ "index": 0, "value": f, "valueTwo": f, "op": "SCMP_CMP_MASKED_EQ" })
                    })
                    .collect();
                rules.push(json!({
                    "names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": eperm, "args": args,
                }));
                rules.push(json!({
                    "names": [name], "action": "SCMP_ACT_ALLOW",
                    "args": [{ "index": 0, "value": 0, "op": "SCMP_CMP_GE" }],
                }));
            }
        }
    }
    let mut syscalls = vec![
        json!({ "names": allowed, "action": "SCMP_ACT_ALLOW" }),
        json!({ "names": refused, "action": "SCMP_ACT_ERRNO", "errnoRet": eperm }),
    ];
    syscalls.extend(rules);
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::ENOSYS,
        "architectures": architectures(),
        "syscalls": syscalls,
    })
}

/// Why a profile could not be made into a filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("the seccomp profile uses {0}, which Manifold's filter compiler does not support")]
    Unsupported(String),
    #[error("libseccomp refused the profile: {0}")]
    Compile(#[from] libseccomp::error::SeccompError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;

/// A seccomp filter as the kernel takes it: a classic BPF program.
pub struct Filter {
    program: Vec<libc::sock_filter>,
}

impl Filter {
    /// The filter of `profile`, compiled by libseccomp the first time this host sees the
    /// profile and read back from `dir` (root's own, 0700) after that. A damaged file is
    /// compiled anew; two dynos starting at once each write a file of their own and rename it
    /// into place, so neither reads half a program.
    pub fn cached(profile: &LinuxSeccomp, dir: &Path) -> Result<Filter, FilterError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FilterError::Io { path, source }
        };
        let name = digest(profile);
        let path = dir.join(format!("{name}.bpf"));
        match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(mut file) => {
                if let Some(filter) = Filter::read(&mut file).map_err(io_err(&path))? {
                    return Ok(filter);
                }
                tracing::warn!(
                    "{}: not a seccomp program; compiling it again",
                    path.display()
                );
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err(&path)(err)),
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let written = compile(profile)
            .and_then(|ctx| Ok(ctx.export_bpf(&file)?))
            .and_then(|()| {
                file.flush()
                    .and_then(|()| file.sync_all())
                    .and_then(|()| file.rewind())
                    .map_err(io_err(&tmp))
            })
            .and_then(|()| Filter::read(&mut file).map_err(io_err(&tmp)))
            .and_then(|filter| {
                filter.ok_or_else(|| io_err(&tmp)(io::Error::other("libseccomp wrote no program")))
            })
            .and_then(|filter| {
                fs::rename(&tmp, &path).map_err(io_err(&path))?;
                Ok(filter)
            });
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// A program read from `file`, or None when it is not one (empty, a partial instruction,
    /// longer than the kernel takes).
    fn read(file: &mut File) -> io::Result<Option<Filter>> {
        let size = std::mem::size_of::<libc::sock_filter>();
        let mut bytes = Vec::new();
        file.take((MAX_INSTRUCTIONS * size + 1) as u64)
            .read_to_end(&mut bytes)?;
        if bytes.is_empty() || bytes.len() % size != 0 || bytes.len() > MAX_INSTRUCTIONS * size {
            return Ok(None);
        }
        // libseccomp writes the program in the host's byte order, as the kernel reads it.
        let program = bytes
            .chunks_exact(size)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Ok(Some(Filter { program }))
    }

    /// Puts the calling thread under the filter. It must have `no_new_privs` set (the dyno's
    /// spec asks libcontainer for it) or `CAP_SYS_ADMIN`. Called in the dyno's init after
    /// libcontainer's last step, just before the command is executed; only a raw syscall, so
    /// it is safe in the child of a fork.
    pub fn install(&self) -> io::Result<()> {
        let prog = libc::sock_fprog {
            len: u16::try_from(self.program.len()).map_err(io::Error::other)?,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points at `self.program`, alive for the call; the kernel copies it.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Names a profile's compiled program: its JSON's digest (with libseccomp's version, whose
/// compiler made it).
fn digest(profile: &LinuxSeccomp) -> String {
    let mut hash = Sha256::new();
    hash.update(serde_json::to_vec(profile).unwrap_or_default());
    let v = libseccomp::ScmpVersion::current()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_default();
    hash.update(v.as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// libseccomp's filter for `profile`, read as libcontainer reads one: several comparisons
/// of one argument are alternatives, each its own rule; a rule whose action is the default
/// one is left out. Only what [`profile`] uses is supported; anything else is refused rather
/// than half-read.
fn compile(profile: &LinuxSeccomp) -> Result<ScmpFilterContext, FilterError> {
    if profile.flags().as_ref().is_some_and(|f| !f.is_empty()) || profile.listener_path().is_some()
    {
        return Err(FilterError::Unsupported("flags or a listener".into()));
    }
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default)?;
    for arch in profile.architectures().iter().flatten() {
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        ctx.add_arch(ScmpArch::from_str(&name)?)?;
    }
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let mut comparisons = Vec::new();
        let mut indexes = Vec::new();
        for arg in rule.args().iter().flatten() {
            indexes.push(arg.index());
            let op = match arg.op() {
                LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
                LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
                LinuxSeccompOperator::ScmpCmpMaskedEq => {
                    ScmpCompareOp::MaskedEqual(arg.value_two().unwrap_or_default())
                }
                other => return Err(FilterError::Unsupported(format!("{other:?}"))),
            };
            comparisons.push(ScmpArgCompare::new(arg.index() as u32, op, arg.value()));
        }
        indexes.sort_unstable();
        indexes.dedup();
        let alternatives = indexes.len() < comparisons.len();
        for name in rule.names() {
            // A name this libseccomp does not know has no number to filter: it falls to the
            // default action, as under libcontainer.
            let Ok(call) = ScmpSyscall::from_name(name) else {
                continue;
            };
            if comparisons.is_empty() {
                ctx.add_rule(act, call)?;
            } else if alternatives {
                for c in &comparisons {
                    ctx.add_rule_conditional(act, call, std::slice::from_ref(c))?;
                }
            } else {
                ctx.add_rule_conditional(act, call, &comparisons)?;
            }
        }
    }
    Ok(ctx)
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, FilterError> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            ScmpAction::Errno(errno.map_or(libc::EPERM, |e| e as i32))
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        other => return Err(FilterError::Unsupported(format!("{other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_without_duplicates() {
        for pair in SYSCALLS.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
    }

    #[test]
    fn namespaces_mounts_and_kernel_surfaces_are_refused() {
        let rule = |name: &str| {
            SYSCALLS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, r)| *r)
                .unwrap_or(Rule::Absent("not in the table"))
        };
        for name in [
            "unshare",
            "setns",
            "mount",
            "io_uring_setup",
            "keyctl",
            "bpf",
            "userfaultfd",
            "perf_event_open",
            "ptrace",
        ] {
            assert!(
                matches!(rule(name), Rule::Refuse(_)),
                "{name} is not refused"
            );
        }
        assert!(matches!(rule("clone3"), Rule::Absent(_)));
        assert_eq!(rule("clone"), Rule::AllowWithoutFlags(CLONE_NEW_FLAGS));
        assert_eq!(rule("read"), Rule::Allow);
    }

    #[test]
    fn the_clone_rule_reads_the_same_whichever_operand_is_the_mask() {
        let profile = profile();
        let clone_errno = profile["syscalls"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["names"][0] == "clone" && r["action"] == "SCMP_ACT_ERRNO")
            .expect("clone's refusal rule");
        let args = clone_errno["args"].as_array().expect("args");
        assert_eq!(args.len(), CLONE_NEW_FLAGS.len());
        for a in args {
            assert_eq!(a["value"], a["valueTwo"], "{a}");
        }
        assert_eq!(profile["defaultErrnoRet"], libc::ENOSYS);
    }

    fn oci() -> LinuxSeccomp {
        serde_json::from_value(profile()).expect("the profile is an OCI seccomp object")
    }

    #[test]
    fn a_profile_is_compiled_once_and_read_back_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seccomp = dir.path().join("seccomp");
        let first = Filter::cached(&oci(), &seccomp).expect("compiled");
        let instructions = first.program.len();
        assert!(
            instructions > 100 && instructions <= MAX_INSTRUCTIONS,
            "{instructions}"
        );
        let files: Vec<_> = fs::read_dir(&seccomp).expect("dir").flatten().collect();
        assert_eq!(files.len(), 1, "one program, no temporary file left");
        let meta = files[0].metadata().expect("meta");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(&seccomp).expect("dir").permissions().mode() & 0o777,
            0o700
        );
        // The second dyno reads what the first compiled: same program, same file.
        let modified = meta.modified().expect("mtime");
        let again = Filter::cached(&oci(), &seccomp).expect("read back");
        assert_eq!(bytes(&again), bytes(&first));
        assert_eq!(
            files[0]
                .metadata()
                .expect("meta")
                .modified()
                .expect("mtime"),
            modified
        );
        // A damaged program (half an instruction) is compiled again.
        fs::write(files[0].path(), [1, 2, 3]).expect("damage");
        let mended = Filter::cached(&oci(), &seccomp).expect("recompiled");
        assert_eq!(bytes(&mended), bytes(&first));
        // Another profile is another program.
        let mut other = profile();
        other["defaultErrnoRet"] = json!(libc::EPERM);
        let other: LinuxSeccomp = serde_json::from_value(other).expect("oci");
        Filter::cached(&other, &seccomp).expect("compiled");
        assert_eq!(fs::read_dir(&seccomp).expect("dir").count(), 2);
    }

    #[test]
    fn a_profile_the_compiler_cannot_read_whole_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut trace = profile();
        trace["syscalls"][0]["action"] = json!("SCMP_ACT_TRACE");
        let trace: LinuxSeccomp = serde_json::from_value(trace).expect("oci");
        let err = Filter::cached(&trace, dir.path()).err().expect("refused");
        assert!(err.to_string().contains("ScmpActTrace"), "{err}");
        assert_eq!(
            fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "nothing left"
        );
    }

    fn bytes(f: &Filter) -> Vec<(u16, u8, u8, u32)> {
        f.program
            .iter()
            .map(|i| (i.code, i.jt, i.jf, i.k))
            .collect()
    }
}
