/* A hostile dyno's probe for the isolation tests, built by the test with the host's
 * `cc -static` and bind-mounted into a dyno (stacks hold no compiler).
 *
 *   probe syscalls   tries each call the seccomp profile refuses, and ordinary process
 *                    creation; prints `name=errno` per line (0: the call worked)
 *   probe euid       prints `euid=N`
 *   probe inotify    opens inotify instances until refused, prints `inotify=N errno=E`,
 *                    then holds them until killed
 *   probe compat     makes a syscall through the i386 (`int $0x80`) and the x32 ABI, each
 *                    in a child, and prints `NAME=signal S` (killed) or `NAME=status S`
 *
 * Raw syscall(2) everywhere: libc wrappers might not exist or might hide the errno. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long ret) {
    printf("%s=%d\n", name, ret < 0 ? errno : 0);
}

/* clone(2) with `flags`; a child that was made exits at once. */
static void try_clone(const char *name, unsigned long flags) {
    errno = 0;
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0)
        _exit(0);
    int err = errno;
    if (pid > 0)
        waitpid(pid, NULL, 0);
    printf("%s=%d\n", name, pid < 0 ? err : 0);
}

static void *thread_main(void *arg) { return arg; }

static int syscalls(void) {
    char buf[256] = {0};
    try_clone("clone", 0);
    try_clone("clone_newuser", CLONE_NEWUSER);
    try_clone("clone_newnet", CLONE_NEWNET);
    try_clone("clone_newns", CLONE_NEWNS);
    try_clone("clone_newpid", CLONE_NEWPID);
    try_clone("clone_newuts", CLONE_NEWUTS);
    try_clone("clone_newipc", CLONE_NEWIPC);
    try_clone("clone_newcgroup", CLONE_NEWCGROUP);
    try_clone("clone_newuser_newnet", CLONE_NEWUSER | CLONE_NEWNET);

    pid_t f = fork();
    if (f == 0)
        _exit(0);
    report("fork", f);
    if (f > 0)
        waitpid(f, NULL, 0);
    pthread_t t;
    int r = pthread_create(&t, NULL, thread_main, NULL);
    printf("thread=%d\n", r);
    if (r == 0)
        pthread_join(t, NULL);

    /* clone3 with CLONE_NEWUSER: its struct is out of seccomp's reach, so the whole call
     * must be missing. */
    unsigned long long args[11] = {0};
    args[0] = CLONE_NEWUSER;
    args[4] = SIGCHLD; /* exit_signal */
    errno = 0;
    long c3 = syscall(435 /* clone3 */, args, sizeof(args));
    if (c3 == 0)
        _exit(0);
    report("clone3", c3);

    report("unshare", syscall(SYS_unshare, CLONE_NEWUSER));
    report("setns", syscall(SYS_setns, 0, CLONE_NEWNET));
    report("io_uring_setup", syscall(425, 8, buf));
    report("io_uring_enter", syscall(426, 0, 1, 0, 0, 0, 0));
    report("io_uring_register", syscall(427, 0, 0, 0, 0));
    report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0));
    report("add_key", syscall(SYS_add_key, "user", "k", "v", 1, -3));
    report("request_key", syscall(SYS_request_key, "user", "k", NULL, 0));
    report("bpf", syscall(SYS_bpf, 5 /* BPF_PROG_LOAD */, buf, 128));
    report("userfaultfd", syscall(SYS_userfaultfd, 0));
    report("perf_event_open", syscall(SYS_perf_event_open, buf, 0, -1, -1, 0));
    report("mount", syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, NULL));
    report("umount2", syscall(SYS_umount2, "/proc", 0));
    report("pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp"));
    report("open_tree", syscall(428, -100, "/", 1 /* OPEN_TREE_CLONE */));
    report("move_mount", syscall(429, -1, "", -1, "", 0));
    report("fsopen", syscall(430, "tmpfs", 0));
    report("mount_setattr", syscall(442, -1, "", 0, buf, 32));
    report("chroot", syscall(SYS_chroot, "/tmp"));
    report("ptrace", syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0));
    report("process_vm_readv", syscall(SYS_process_vm_readv, 1, buf, 1, buf, 1, 0));
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    report("init_module", syscall(SYS_init_module, buf, 0, ""));
    report("reboot", syscall(SYS_reboot, 0, 0, 0, NULL)); /* bad magic: EINVAL if it got through */
    report("swapon", syscall(SYS_swapon, "/nonexistent", 0));
    report("acct", syscall(SYS_acct, NULL));
    report("sethostname", syscall(SYS_sethostname, "x", 1));
    report("modify_ldt", syscall(SYS_modify_ldt, 0, buf, sizeof(buf)));
    report("syslog", syscall(SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0));
    report("personality_query", syscall(SYS_personality, 0xffffffffUL));
    report("personality_no_aslr", syscall(SYS_personality, 0x0040000UL /* ADDR_NO_RANDOMIZE */));
    /* A call the table does not know (lsm_get_self_attr, Linux 6.8): as if the kernel lacked it. */
    report("unlisted", syscall(459, 0, NULL, NULL, 0));
    return 0;
}

static int inotify(void) {
    int n = 0;
    while (n < 1000000 && inotify_init1(IN_CLOEXEC) >= 0)
        n++;
    printf("inotify=%d errno=%d\n", n, errno);
    fflush(stdout);
    for (;;)
        pause();
    return 0;
}

/* Runs `call` in a child and reports how the child ended. */
static void in_child(const char *name, void (*call)(void)) {
    pid_t pid = fork();
    if (pid == 0) {
        call();
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status))
        printf("%s=signal %d\n", name, WTERMSIG(status));
    else
        printf("%s=status %d\n", name, WEXITSTATUS(status));
}

static void int80_getpid(void) {
    long ret = 20; /* getpid on i386 */
    __asm__ volatile("int $0x80" : "+a"(ret) : : "memory");
}

static void x32_getpid(void) {
    syscall(0x40000000L | 39 /* __X32_SYSCALL_BIT | getpid */);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 2 && strcmp(argv[1], "syscalls") == 0)
        return syscalls();
    if (argc == 2 && strcmp(argv[1], "euid") == 0) {
        printf("euid=%d\n", (int)geteuid());
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "inotify") == 0)
        return inotify();
    if (argc == 2 && strcmp(argv[1], "compat") == 0) {
        in_child("int80", int80_getpid);
        in_child("x32", x32_getpid);
        return 0;
    }
    fprintf(stderr, "usage: probe syscalls|euid|inotify|compat\n");
    return 2;
}
