/* Test fixture for the jailer tests: exec'd by husk-jailer in place of the VMM, it
 * reports what the jail looks like from inside, one "key=value" per line on stdout.
 * Built static by the test (the jail has no dynamic loader). Arguments after the
 * jailer's "--id <id>": "--sleep MS" waits before exiting, "--exit N" sets the code. */
#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static void list(const char *dir) {
    DIR *d = opendir(dir);
    printf("ls %s=", dir);
    if (!d) { printf("<error>\n"); return; }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) printf("%s,", e->d_name);
    }
    printf("\n");
    closedir(d);
}

int main(int argc, char **argv) {
    int code = 0;
    long sleep_ms = 0;
    for (int i = 1; i < argc; i++) {
        printf("arg=%s\n", argv[i]);
        if (!strcmp(argv[i], "--sleep") && i + 1 < argc) sleep_ms = atol(argv[i + 1]);
        if (!strcmp(argv[i], "--exit") && i + 1 < argc) code = atoi(argv[i + 1]);
    }
    printf("argv0=%s\n", argv[0]);
    printf("uid=%d euid=%d gid=%d egid=%d\n", getuid(), geteuid(), getgid(), getegid());
    printf("groups=%d\n", getgroups(0, NULL));
    printf("pid=%d\n", getpid());
    int envc = 0;
    for (char **e = environ; e && *e; e++) envc++;
    printf("envc=%d\n", envc);
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct c[2];
    memset(c, 0, sizeof c);
    syscall(SYS_capget, &h, c);
    printf("capeff=%x%08x capprm=%x%08x\n", c[1].effective, c[0].effective, c[1].permitted, c[0].permitted);
    printf("nonewprivs=%d\n", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
    printf("seccomp=%d\n", prctl(PR_GET_SECCOMP, 0, 0, 0, 0));
    int open_fds = 0;
    for (int fd = 3; fd < 1024; fd++) if (fcntl(fd, F_GETFD) >= 0) open_fds++;
    printf("extra_fds=%d\n", open_fds);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    printf("nofile=%llu\n", (unsigned long long)rl.rlim_cur);
    getrlimit(RLIMIT_FSIZE, &rl);
    printf("fsize=%llu\n", (unsigned long long)rl.rlim_cur);
    char cwd[256];
    printf("cwd=%s\n", getcwd(cwd, sizeof cwd) ? cwd : "<error>");
    printf("etc_passwd=%d\n", access("/etc/passwd", F_OK) == 0);
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    printf("kvm_open=%d\n", kvm >= 0);
    printf("sid_is_pid=%d\n", getsid(0) == getpid());
    list("/");
    list("/dev");
    fflush(stdout);
    if (sleep_ms > 0) {
        struct timespec ts = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return code;
}
