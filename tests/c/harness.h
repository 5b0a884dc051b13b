/* Small test harness for libfpl's C tests: checks that count instead of
 * aborting, helper processes that hold locks, and an independent view of
 * the kernel's locks read from /proc/locks. */
#ifndef FPL_TEST_HARNESS_H
#define FPL_TEST_HARNESS_H

#define _GNU_SOURCE
#undef NDEBUG
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fpl.h"

static int h_passed, h_failed;
static const char *h_test = "";

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (cond) {                                                          \
            h_passed++;                                                      \
        } else {                                                             \
            h_failed++;                                                      \
            fprintf(stderr, "FAIL %s (%s:%d): %s: ", h_test, __FILE__,       \
                    __LINE__, #cond);                                        \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
        }                                                                    \
    } while (0)

#define CHECK_RC(rc, want, err)                                              \
    CHECK((rc) == (want), "rc=%d want=%d message='%s'", (rc), (want),        \
          (err).message)

/* Is the named holder WANT, as a conflict reports it? Under valgrind
 * (FPL_TEST_UNDER_VALGRIND set by the test that runs it), a walk of /proc
 * can outlast the holder lookup's 1 s budget, and the conflict then names
 * no holder (-1), as fpl.h documents; memory errors are what that run is
 * for. */
static inline int h_holder_is(int got, int want) {
    return got == want || (getenv("FPL_TEST_UNDER_VALGRIND") != NULL && got == -1);
}

static inline void h_die(const char *what) {
    fprintf(stderr, "harness: %s: %s\n", what, strerror(errno));
    exit(99);
}

/* A fresh temporary folder for one run. */
static char h_dir[1024];

static inline void h_make_dir(void) {
    const char *base = getenv("TMPDIR");
    snprintf(h_dir, sizeof h_dir, "%s/fpl-c-XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(h_dir)) h_die("mkdtemp");
}

/* Creates DIR/NAME (1 MiB, sparse) and returns its path in a static slot. */
static inline const char *h_image(const char *name) {
    static char paths[32][PATH_MAX];
    static int next;
    char *p = paths[next++ % 32];
    snprintf(p, PATH_MAX, "%s/%s", h_dir, name);
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) h_die("create image");
    if (ftruncate(fd, 1 << 20) != 0) h_die("ftruncate");
    close(fd);
    return p;
}

static inline ino_t h_ino(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) h_die("stat");
    return st.st_ino;
}

/* Bytes of interest as a bit mask: bit 0 = byte 0, bits 1-5 = 100-104,
 * bits 6-10 = 200-204. */
#define B(byte) ((byte) == 0 ? 1u : (byte) < 200 ? 1u << ((byte) - 99) : 1u << ((byte) - 194))

static inline unsigned h_mask_of_range(unsigned long long first, unsigned long long last) {
    static const unsigned bytes[] = {0, 100, 101, 102, 103, 104, 200, 201, 202, 203, 204};
    unsigned m = 0;
    for (size_t i = 0; i < sizeof bytes / sizeof bytes[0]; i++)
        if (bytes[i] >= first && bytes[i] <= last) m |= B(bytes[i]);
    return m;
}

/* What /proc/locks says about inode INO: the bytes held by anybody, and
 * the number of lock entries (one per owner and merged range). */
static inline unsigned h_proc_locks_once(ino_t ino, int *entries) {
    FILE *f = fopen("/proc/locks", "re");
    if (!f) h_die("open /proc/locks");
    char line[512];
    unsigned mask = 0;
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        char cls[16], mode[16], type[16], dev[64], end[32];
        int pid;
        unsigned long long first;
        if (strstr(line, "->")) continue; /* waiters hold nothing */
        if (sscanf(line, "%*d: %15s %15s %15s %d %63s %llu %31s", cls, mode,
                   type, &pid, dev, &first, end) != 7)
            continue;
        char *colon = strrchr(dev, ':');
        if (!colon || strtoull(colon + 1, NULL, 10) != (unsigned long long)ino) continue;
        unsigned long long last = strcmp(end, "EOF") == 0 ? ~0ULL : strtoull(end, NULL, 10);
        mask |= h_mask_of_range(first, last);
        n++;
    }
    fclose(f);
    if (entries) *entries = n;
    return mask;
}

/* /proc/locks is produced a page at a time, each page under its own lock:
 * while other processes lock and unlock, one pass can miss entries. Read
 * until two passes in a row agree. */
static inline unsigned h_proc_locks(ino_t ino, int *entries) {
    int n = 0, m = 0;
    unsigned mask = h_proc_locks_once(ino, &n);
    for (int i = 0; i < 50; i++) {
        unsigned again = h_proc_locks_once(ino, &m);
        if (again == mask && m == n) break;
        mask = again;
        n = m;
    }
    if (entries) *entries = n;
    return mask;
}

/* The bytes the open file description behind FD holds (its fdinfo). */
static inline unsigned h_fd_locks(int fd) {
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "re");
    if (!f) h_die("open fdinfo");
    unsigned mask = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long first;
        char end[32];
        if (strncmp(line, "lock:", 5) != 0) continue;
        if (sscanf(line + 5, "%*d: %*s %*s %*s %*d %*s %llu %31s", &first, end) != 2) continue;
        unsigned long long last = strcmp(end, "EOF") == 0 ? ~0ULL : strtoull(end, NULL, 10);
        mask |= h_mask_of_range(first, last);
    }
    fclose(f);
    return mask;
}

static inline int h_count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) h_die("opendir /proc/self/fd");
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

/* ---- helper processes --------------------------------------------------
 * The test binary re-executes itself as a helper: `argv0 hold PATH PERM
 * SHARED FLAGS` acquires, prints "ok" or "err <rc>" on stdout, then holds
 * until its stdin closes, releases and exits. `argv0 raw PATH` takes
 * locks the way other software does (see main). */
typedef struct {
    pid_t pid;
    int to_child;   /* closing it tells the helper to finish */
    int from_child;
    char reply[256];
} h_helper;

static const char *h_self;

static inline int h_spawn(h_helper *h, char *const argv[]) {
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) h_die("pipe");
    pid_t pid = fork();
    if (pid < 0) h_die("fork");
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        execv(h_self, argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    h->pid = pid;
    h->to_child = in[1];
    h->from_child = out[0];
    ssize_t n = read(h->from_child, h->reply, sizeof h->reply - 1);
    h->reply[n > 0 ? n : 0] = 0;
    return strncmp(h->reply, "ok", 2) == 0 ? 0 : -1;
}

static inline int h_hold(h_helper *h, const char *path, unsigned perm, unsigned shared, unsigned flags) {
    char p[16], s[16], f[16];
    snprintf(p, sizeof p, "%u", perm);
    snprintf(s, sizeof s, "%u", shared);
    snprintf(f, sizeof f, "%u", flags);
    char *argv[] = {(char *)h_self, (char *)"hold", (char *)path, p, s, f, NULL};
    return h_spawn(h, argv);
}

static inline int h_finish(h_helper *h) {
    int status = 0;
    close(h->to_child);
    close(h->from_child);
    if (waitpid(h->pid, &status, 0) < 0) h_die("waitpid");
    return status;
}

/* Common start of a test program (after helper roles are dispatched):
 * knows its own path for re-executing itself as a helper, ignores SIGPIPE,
 * and makes its temporary folder. */
static inline void h_init(void) {
    static char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) h_die("readlink");
    self[n] = 0;
    h_self = self;
    signal(SIGPIPE, SIG_IGN);
    h_make_dir();
}

static inline int h_helper_main(int argc, char **argv) {
    if (argc == 6 && strcmp(argv[1], "hold") == 0) {
        fpl_lock *lock = NULL;
        fpl_error err;
        int rc = fpl_acquire(argv[2], (uint32_t)strtoul(argv[3], NULL, 10),
                             (uint32_t)strtoul(argv[4], NULL, 10),
                             (uint32_t)strtoul(argv[5], NULL, 10), &lock, &err);
        if (rc == 0) printf("ok\n"); else printf("err %d %s\n", rc, err.message);
        fflush(stdout);
        char c;
        while (read(0, &c, 1) > 0) {}
        return fpl_release(lock) == 0 ? 0 : 1;
    }
    if (argc == 3 && strcmp(argv[1], "raw") == 0) {
        /* What an old QEMU (graph-mod bytes 104/204, OFD) and libvirt's
         * virtlockd (POSIX write lock on byte 0) hold. */
        int fd = open(argv[2], O_RDWR | O_CLOEXEC);
        struct flock fl = {0};
        int ok = fd >= 0;
        fl.l_whence = SEEK_SET;
        fl.l_type = F_RDLCK;
        fl.l_len = 1;
        fl.l_start = 104;
        ok = ok && fcntl(fd, F_OFD_SETLK, &fl) == 0;
        fl.l_start = 204;
        ok = ok && fcntl(fd, F_OFD_SETLK, &fl) == 0;
        int fd2 = open(argv[2], O_RDWR | O_CLOEXEC);
        struct flock lv = {0};
        lv.l_whence = SEEK_SET;
        lv.l_type = F_WRLCK;
        lv.l_start = 0;
        lv.l_len = 1;
        ok = ok && fd2 >= 0 && fcntl(fd2, F_SETLK, &lv) == 0;
        printf(ok ? "ok\n" : "err\n");
        fflush(stdout);
        char c;
        while (read(0, &c, 1) > 0) {}
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "xlock") == 0) {
        /* Other software's whole-file exclusive lock. */
        int fd = open(argv[2], O_RDWR | O_CLOEXEC);
        struct flock fl = {0};
        fl.l_whence = SEEK_SET;
        fl.l_type = F_WRLCK;
        int ok = fd >= 0 && fcntl(fd, F_OFD_SETLK, &fl) == 0;
        printf(ok ? "ok\n" : "err\n");
        fflush(stdout);
        char c;
        while (read(0, &c, 1) > 0) {}
        return 0;
    }
    return -1;
}

#endif
