/* QEMU peers for libfpl's C compatibility tests: finding each QEMU
 * version's binaries, starting and always stopping QEMU processes, waiting
 * for their locks, and the protocol's prediction written independently of
 * libfpl (from PROTOCOL.md), to judge both directions. */
#ifndef FPL_QEMU_HARNESS_H
#define FPL_QEMU_HARNESS_H

#include "harness.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

/* ---- QEMU versions --------------------------------------------------
 * FPL_QEMU_DIRS="10.0=/usr/bin:7.2=/path/usr/bin", set by the Rust runner.
 * A version's folder must hold every tool a test asks for: a missing one
 * fails the run with what to install, never skips. */
typedef struct {
    char version[16];
    char dir[1024];
} q_qemu;

static q_qemu q_versions[4];
static int q_nversions;

static inline void q_load_versions(void) {
    const char *spec = getenv("FPL_QEMU_DIRS");
    if (!spec || !*spec) {
        fprintf(stderr, "FPL_QEMU_DIRS is not set: run these tests through `cargo test`\n");
        exit(2);
    }
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *save = NULL, *item = strtok_r(buf, ":", &save); item && q_nversions < 4;
         item = strtok_r(NULL, ":", &save)) {
        char *eq = strchr(item, '=');
        if (!eq) continue;
        *eq = 0;
        snprintf(q_versions[q_nversions].version, sizeof q_versions[0].version, "%s", item);
        snprintf(q_versions[q_nversions].dir, sizeof q_versions[0].dir, "%s", eq + 1);
        q_nversions++;
    }
}

/* The path of TOOL for QEMU Q; exits the run if it is missing. */
static inline const char *q_tool(const q_qemu *q, const char *tool) {
    static char paths[16][PATH_MAX];
    static int next;
    char *p = paths[next++ % 16];
    snprintf(p, PATH_MAX, "%s/%s", q->dir, tool);
    if (access(p, X_OK) != 0) {
        fprintf(stderr,
                "MISSING %s for QEMU %s (looked in %s): QEMU 10 comes with the machine's "
                "qemu-utils; QEMU 7.2 is unpacked by scripts/fetch-qemu-7.2 (needs root and "
                "Debian's package registry)\n",
                tool, q->version, q->dir);
        exit(2);
    }
    return p;
}

static inline int q_has_tool(const q_qemu *q, const char *tool) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", q->dir, tool);
    return access(p, X_OK) == 0;
}

/* ---- processes ---------------------------------------------------------
 * Every started process is recorded and killed at exit, however the run
 * ends (the Rust runner also kills the whole process group on a time-out). */
typedef struct {
    pid_t pid;
    int in;              /* its stdin; closing it ends qemu-io */
    char log[PATH_MAX];  /* its stdout + stderr */
} q_proc;

static pid_t q_live[64];

static inline void q_track(pid_t pid) {
    for (int i = 0; i < 64; i++)
        if (q_live[i] == 0) {
            q_live[i] = pid;
            return;
        }
}

static inline void q_untrack(pid_t pid) {
    for (int i = 0; i < 64; i++)
        if (q_live[i] == pid) q_live[i] = 0;
}

static inline void q_kill_all(void) {
    for (int i = 0; i < 64; i++)
        if (q_live[i] > 0) {
            kill(q_live[i], SIGKILL);
            waitpid(q_live[i], NULL, 0);
            q_live[i] = 0;
        }
}

static int q_log_counter;

/* Starts ARGV with a pipe as stdin and a log file as stdout and stderr. */
static inline q_proc q_start(char *const argv[]) {
    q_proc p;
    int in[2];
    if (pipe2(in, O_CLOEXEC) != 0) h_die("pipe");
    snprintf(p.log, sizeof p.log, "%s/proc-%d-%d.log", h_dir, (int)getpid(), q_log_counter++);
    int log = open(p.log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log < 0) h_die("open log");
    pid_t pid = fork();
    if (pid < 0) h_die("fork");
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(log, 1);
        dup2(log, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    close(in[0]);
    close(log);
    q_track(pid);
    p.pid = pid;
    p.in = in[1];
    return p;
}

/* Reads a process's log (at most LEN-1 bytes). */
static inline const char *q_read_log(const char *path, char *buf, size_t len) {
    buf[0] = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return buf;
    ssize_t n = read(fd, buf, len - 1);
    buf[n > 0 ? n : 0] = 0;
    close(fd);
    return buf;
}

static inline void q_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Whether P is still running (reaps it if not; *STATUS gets its status). */
static inline int q_running(q_proc *p, int *status) {
    int st = 0;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == p->pid) {
        q_untrack(p->pid);
        if (status) *status = st;
        p->pid = -1;
        return 0;
    }
    return p->pid > 0;
}

/* Stops P (SIGTERM, then SIGKILL after 5 s) and reaps it. */
static inline int q_stop(q_proc *p) {
    int status = 0;
    if (p->in >= 0) {
        close(p->in);
        p->in = -1;
    }
    if (p->pid <= 0) return 0;
    kill(p->pid, SIGTERM);
    for (int i = 0; i < 500; i++) {
        if (!q_running(p, &status)) return status;
        q_sleep_ms(10);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &status, 0);
    q_untrack(p->pid);
    p->pid = -1;
    return status;
}

/* Runs ARGV to completion (killed after TIMEOUT_S); its stdout and stderr
 * land in OUT. Returns the exit code, or 128+signal. */
static inline int q_run(char *const argv[], char *out, size_t len, int timeout_s) {
    q_proc p = q_start(argv);
    close(p.in);
    p.in = -1;
    int status = 0;
    int waited = 0;
    while (q_running(&p, &status)) {
        if (waited++ > timeout_s * 100) {
            q_stop(&p);
            snprintf(out, len, "(killed after %d s)", timeout_s);
            return 128 + SIGKILL;
        }
        q_sleep_ms(10);
    }
    q_read_log(p.log, out, len);
    unlink(p.log);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Waits (at most 30 s) until the bytes on PATH's inode are exactly WANT
 * (an h_proc_locks mask), or P exits. Returns 1 when they are. */
static inline int q_wait_bytes(q_proc *p, const char *path, unsigned want) {
    for (int i = 0; i < 3000; i++) {
        if (h_proc_locks(h_ino(path), NULL) == want) return 1;
        if (p && !q_running(p, NULL)) return h_proc_locks(h_ino(path), NULL) == want;
        q_sleep_ms(10);
    }
    return 0;
}

/* ---- images ------------------------------------------------------------ */
static inline const char *q_create(const q_qemu *q, const char *name, const char *fmt,
                            const char *backing) {
    static char paths[32][PATH_MAX];
    static int next;
    char *p = paths[next++ % 32];
    snprintf(p, PATH_MAX, "%s/%s", h_dir, name);
    unlink(p);
    char out[4096];
    int rc;
    if (backing) {
        char *argv[] = {(char *)q_tool(q, "qemu-img"), (char *)"create", (char *)"-q",
                        (char *)"-f", (char *)fmt, (char *)"-b", (char *)backing,
                        (char *)"-F", (char *)"raw", p, NULL};
        rc = q_run(argv, out, sizeof out, 30);
    } else {
        char *argv[] = {(char *)q_tool(q, "qemu-img"), (char *)"create", (char *)"-q",
                        (char *)"-f", (char *)fmt, p, (char *)"16M", NULL};
        rc = q_run(argv, out, sizeof out, 30);
    }
    if (rc != 0) {
        fprintf(stderr, "qemu-img create %s failed: %s\n", p, out);
        exit(2);
    }
    return p;
}

/* ---- the protocol, written from PROTOCOL.md (independent of libfpl) ----
 * Masks use harness.h's B(byte). */
#define P_CR 0x1u
#define P_W 0x2u
#define P_WU 0x4u
#define P_RS 0x8u

typedef struct {
    unsigned lock;     /* mask of bytes locked */
    int ntests;
    unsigned test[10]; /* bytes tested, in order */
    unsigned name[10]; /* the permission bit each test's message names */
} q_plan_t;

static inline q_plan_t q_plan(unsigned perm, unsigned shared, int exact) {
    q_plan_t p;
    memset(&p, 0, sizeof p);
    unsigned use = perm, refuse = ~shared & 0xfu;
    if (!exact) {
        if (use & (P_WU | P_RS)) use |= P_W;
        use &= ~P_WU;
        if (refuse & (P_W | P_WU)) refuse |= P_W | P_RS;
        refuse &= ~P_WU;
    }
    for (unsigned i = 0; i < 4; i++) {
        if (use & (1u << i)) p.lock |= B(100 + i);
        if (refuse & (1u << i)) p.lock |= B(200 + i);
    }
    if (!exact && (refuse & P_W)) p.lock |= B(202);
    for (unsigned i = 0; i < 4; i++)
        if (use & (1u << i)) {
            p.test[p.ntests] = 200 + i;
            p.name[p.ntests++] = 1u << i;
            if (!exact && i == 1) {
                p.test[p.ntests] = 202;
                p.name[p.ntests++] = P_W;
            }
        }
    for (unsigned i = 0; i < 4; i++)
        if (refuse & (1u << i)) {
            p.test[p.ntests] = 100 + i;
            p.name[p.ntests++] = 1u << i;
            if (!exact && i == 1) {
                p.test[p.ntests] = 102;
                p.name[p.ntests++] = P_W;
            }
        }
    return p;
}

static inline const char *q_perm_name(unsigned bit) {
    switch (bit) {
    case P_CR: return "consistent read";
    case P_W: return "write";
    case P_WU: return "write unchanged";
    default: return "resize";
    }
}

/* The outcome the protocol predicts for a request against bytes HELD by
 * others (read locks only): 0 and no message if admitted, else the byte
 * of the first failing test and QEMU's message in MSG. */
static inline unsigned q_predict(unsigned held, unsigned perm, unsigned shared, int exact, char *msg,
                          size_t len) {
    q_plan_t p = q_plan(perm, shared, exact);
    msg[0] = 0;
    for (int i = 0; i < p.ntests; i++)
        if (held & B(p.test[i])) {
            if (p.test[i] < 200)
                snprintf(msg, len, "Failed to get shared \"%s\" lock", q_perm_name(p.name[i]));
            else
                snprintf(msg, len, "Failed to get \"%s\" lock", q_perm_name(p.name[i]));
            return p.test[i];
        }
    return 0;
}

static const struct {
    const char *name;
    unsigned perm, shared;
} q_presets[4] = {
    {"read-shared", FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE},
    {"read", FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE},
    {"write", FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE},
    {"exclusive", FPL_MODE_EXCLUSIVE_PERM, FPL_MODE_EXCLUSIVE_SHARE},
};

/* Describes a mask for messages, e.g. "100-101,103,201,203". */
static inline const char *q_bytes(unsigned mask, char *buf, size_t len) {
    static const unsigned all[] = {0, 100, 101, 102, 103, 104, 200, 201, 202, 203, 204};
    buf[0] = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (mask & B(all[i])) {
            size_t n = strlen(buf);
            snprintf(buf + n, len - n, "%s%u", n ? "," : "", all[i]);
        }
    if (!buf[0]) snprintf(buf, len, "none");
    return buf;
}

/* ---- QMP over a unix socket (qemu-storage-daemon, qemu-system) -------- */
typedef struct {
    int fd;
    char buf[65536];
    size_t len;
} q_qmp;

/* Reads one line (a JSON object) into LINE; 0 on success. */
static inline int q_qmp_line(q_qmp *m, char *line, size_t cap, int timeout_ms) {
    for (;;) {
        char *nl = memchr(m->buf, '\n', m->len);
        if (nl) {
            size_t n = (size_t)(nl - m->buf);
            size_t c = n < cap - 1 ? n : cap - 1;
            memcpy(line, m->buf, c);
            line[c] = 0;
            memmove(m->buf, nl + 1, m->len - n - 1);
            m->len -= n + 1;
            return 0;
        }
        struct pollfd pfd = {m->fd, POLLIN, 0};
        if (poll(&pfd, 1, timeout_ms) <= 0) return -1;
        ssize_t r = read(m->fd, m->buf + m->len, sizeof m->buf - m->len - 1);
        if (r <= 0) return -1;
        m->len += (size_t)r;
    }
}

/* Sends one command and returns its reply line (events are skipped):
 * contains "return" on success, "error" on failure. */
static inline const char *q_qmp_cmd(q_qmp *m, const char *json, char *reply, size_t cap) {
    size_t n = strlen(json);
    if (write(m->fd, json, n) != (ssize_t)n || write(m->fd, "\n", 1) != 1) {
        snprintf(reply, cap, "(write failed)");
        return reply;
    }
    while (q_qmp_line(m, reply, cap, 30000) == 0)
        if (strstr(reply, "\"return\"") || strstr(reply, "\"error\"")) return reply;
    snprintf(reply, cap, "(no reply)");
    return reply;
}

/* Connects to SOCK (retrying while the server starts) and negotiates. */
static inline int q_qmp_connect(q_qmp *m, const char *sock) {
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
    m->len = 0;
    for (int i = 0; i < 1000; i++) {
        m->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(m->fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
            char line[4096];
            if (q_qmp_line(m, line, sizeof line, 30000) != 0 || !strstr(line, "QMP")) return -1;
            q_qmp_cmd(m, "{\"execute\":\"qmp_capabilities\"}", line, sizeof line);
            return strstr(line, "\"return\"") ? 0 : -1;
        }
        close(m->fd);
        q_sleep_ms(20);
    }
    return -1;
}

#endif
