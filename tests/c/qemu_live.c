/* libfpl against QEMU processes whose locks change while they run: a
 * qemu-storage-daemon driven over QMP (nodes added, reopened, deleted, NBD
 * exports added and removed), libfpl's own updates against qemu-io, images
 * reached through symlinks and hard links, and the bytes old QEMU (104/204)
 * and libvirt's virtlockd (byte 0) hold. /proc/locks is the judge of which
 * bytes are held; qemu_harness.h's q_predict (written from PROTOCOL.md)
 * says which request must fail and with which message. Run by
 * tests/qemu_compat.rs for every QEMU version in FPL_QEMU_DIRS. */
#include "qemu_harness.h"

#include <stdarg.h>

/* What QEMU asks for (perm, shared) in each role, as observed and as QEMU's
 * source sets it; the bytes follow from q_plan(..., exact = 1). */
#define QCOW2_RW_PERM (P_CR | P_W | P_RS) /* a read-write qcow2 node on its file */
#define QCOW2_RW_SHARE (P_CR | P_WU)
#define QCOW2_RO_PERM P_CR /* a read-only qcow2 node on its file */
#define QCOW2_RO_SHARE (P_CR | P_WU)
#define NBD_RW_PERM (P_CR | P_W) /* an NBD export: never shares resize */
#define NBD_RO_PERM P_CR
#define NBD_SHARE (P_CR | P_W | P_WU)

#define LEGACY_BYTES (B(104) | B(204))
#define OUR_BYTES(i) q_plan(q_presets[i].perm, q_presets[i].shared, 0).lock
#define READ_SHARED 0
#define READ 1
#define WRITE 2
#define EXCLUSIVE 3

static unsigned qemu_bytes(unsigned perm, unsigned shared) {
    return q_plan(perm, shared, 1).lock;
}

/* ---- the kernel's view ------------------------------------------------------
 * /proc/locks is generated a page at a time: while other processes lock and
 * unlock (the sibling QEMU suites run in parallel), one read of a long
 * /proc/locks can skip or repeat entries (observed). Two reads in a row
 * that agree are taken as the truth. */
static unsigned proc_locks(const char *path, int *entries) {
    ino_t ino = h_ino(path);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int e1, e2;
    unsigned m1 = h_proc_locks(ino, &e1);
    for (;;) {
        unsigned m2 = h_proc_locks(ino, &e2);
        if (m1 == m2 && e1 == e2) break;
        m1 = m2;
        e1 = e2;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > 5) break; /* the check that follows fails */
    }
    if (entries) *entries = e1;
    return m1;
}

/* q_wait_bytes on agreeing reads: at most 30 s until PATH's bytes are
 * exactly WANT, or P exits. */
static int wait_locks(q_proc *p, const char *path, unsigned want) {
    for (int i = 0; i < 3000; i++) {
        if (proc_locks(path, NULL) == want) return 1;
        if (p && !q_running(p, NULL)) return proc_locks(path, NULL) == want;
        q_sleep_ms(10);
    }
    return 0;
}

/* ---- fpl_query against /proc/locks ------------------------------------ */

static unsigned holder_mask(unsigned perm, unsigned unshared) {
    unsigned m = 0;
    for (unsigned i = 0; i < 4; i++) {
        if (perm & (1u << i)) m |= B(100 + i);
        if (unshared & (1u << i)) m |= B(200 + i);
    }
    return m;
}

/* fpl_query on PATH must report exactly the bytes /proc/locks shows for its
 * inode (104/204 as FPL_STATUS_LEGACY, byte 0 as FPL_STATUS_LIBVIRT), and
 * its holders must account for all of them. When PID > 0, that process
 * must be listed, named COMM (unless NULL), holding exactly WANT (WANT 0
 * and not LISTED: it must not be listed at all). */
static fpl_status check_query(const char *what, const char *path, pid_t pid, const char *comm,
                              unsigned want, int listed) {
    fpl_status st;
    fpl_holder hs[16];
    fpl_error err;
    memset(&st, 0, sizeof st);
    int rc = fpl_query(path, FPL_QUERY_HOLDERS, &st, hs, 16, &err);
    CHECK_RC(rc, 0, err);
    if (rc != 0) return st;
    unsigned proc = proc_locks(path, NULL);
    unsigned got = holder_mask(st.perm, st.unshared);
    if (st.flags & FPL_STATUS_LIBVIRT) got |= B(0);
    char a[128], b[128];
    CHECK(got == (proc & ~LEGACY_BYTES), "%s: fpl_query says %s, /proc/locks %s", what,
          q_bytes(got, a, sizeof a), q_bytes(proc, b, sizeof b));
    CHECK(!!(st.flags & FPL_STATUS_LEGACY) == !!(proc & LEGACY_BYTES),
          "%s: legacy flag %u, /proc/locks %s", what, st.flags, q_bytes(proc, b, sizeof b));
    /* Every holder here is this process, its children or QEMU processes it
     * started: none is out of reach, so "partial" would be wrong. */
    CHECK(!(st.flags & FPL_STATUS_HOLDERS_PARTIAL), "%s: holders partial", what);
    CHECK(st.n_holders <= 16, "%s: %u holders", what, st.n_holders);
    unsigned all = 0, mine = 0;
    int found = 0;
    for (uint32_t i = 0; i < st.n_holders && i < 16; i++) {
        unsigned m = holder_mask(hs[i].perm, hs[i].unshared);
        all |= m;
        if (pid > 0 && hs[i].pid == pid) {
            found = 1;
            mine |= m;
            CHECK(!comm || strcmp(hs[i].name, comm) == 0, "%s: holder %d named '%s', want '%s'",
                  what, (int)pid, hs[i].name, comm ? comm : "");
        }
    }
    CHECK(all == holder_mask(st.perm, st.unshared), "%s: holders hold %s, status says %s", what,
          q_bytes(all, a, sizeof a), q_bytes(holder_mask(st.perm, st.unshared), b, sizeof b));
    if (pid > 0) {
        CHECK(found == (want != 0 || listed), "%s: pid %d listed=%d", what, (int)pid, found);
        CHECK(mine == want, "%s: pid %d holds %s per fpl_query, want %s", what, (int)pid,
              q_bytes(mine, a, sizeof a), q_bytes(want, b, sizeof b));
    }
    return st;
}

/* The conflict libfpl reports must be the one the protocol predicts, in
 * QEMU's words, naming the holder. */
static void check_conflict(const char *what, int rc, const fpl_error *err, unsigned held,
                           unsigned perm, unsigned shared, unsigned flags, pid_t holder,
                           const char *path) {
    char msg[128];
    unsigned byte = q_predict(held, perm, shared, flags & FPL_FLAG_EXACT, msg, sizeof msg);
    if (!byte) {
        CHECK(rc == 0, "%s: rc %d, predicted success: %s", what, rc, err->message);
        return;
    }
    CHECK(rc == -EAGAIN && err->code == -EAGAIN, "%s: rc %d code %d (%s)", what, rc, err->code,
          err->message);
    CHECK(err->byte == byte, "%s: byte %u, predicted %u", what, err->byte, byte);
    CHECK(strstr(err->message, msg) != NULL, "%s: '%s' lacks '%s'", what, err->message, msg);
    char hint[PATH_MAX + 64];
    snprintf(hint, sizeof hint, "Is another process using the image [%s]?", path);
    CHECK(strstr(err->message, hint) != NULL, "%s: '%s' lacks the hint", what, err->message);
    CHECK(err->holder_pid == holder, "%s: holder_pid %d, want %d", what, err->holder_pid,
          (int)holder);
}

/* ---- QMP ----------------------------------------------------------------- */

static char reply[65536];

static const char *jstr(const char *s, char *buf, size_t len) {
    size_t n = 0;
    for (; *s && n + 3 < len; s++) {
        if (*s == '"' || *s == '\\') buf[n++] = '\\';
        buf[n++] = *s;
    }
    buf[n] = 0;
    return buf;
}

static const char *qmp(q_qmp *m, const char *fmt, ...) {
    char cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return q_qmp_cmd(m, cmd, reply, sizeof reply);
}

static int qmp_ok(const char *r) { return strncmp(r, "{\"return\"", 9) == 0; }

/* The reply is an error whose text contains MSG (QEMU's message). */
static int qmp_fails_with(const char *r, const char *msg) {
    char esc[256];
    return strncmp(r, "{\"error\"", 8) == 0 && strstr(r, jstr(msg, esc, sizeof esc)) != NULL;
}

typedef struct {
    q_proc proc;
    q_qmp qmp;
    const char *version;
} daemon_t;

static int daemon_start(daemon_t *d, const q_qemu *q) {
    /* A unix socket's path must fit in sockaddr_un.sun_path. */
    char path[PATH_MAX], sock[sizeof ((struct sockaddr_un *)0)->sun_path];
    char chardev[sizeof sock + 64];
    snprintf(path, sizeof path, "%s/qmp-%s.sock", h_dir, q->version);
    if (strlen(path) >= sizeof sock) {
        CHECK(0, "QEMU %s: socket path too long: %s", q->version, path);
        d->qmp.fd = -1;
        d->proc.pid = -1;
        d->proc.in = -1;
        return -1;
    }
    memcpy(sock, path, strlen(path) + 1);
    snprintf(chardev, sizeof chardev, "socket,id=qmp0,path=%s,server=on,wait=off", sock);
    char *argv[] = {(char *)q_tool(q, "qemu-storage-daemon"), (char *)"--chardev", chardev,
                    (char *)"--monitor", (char *)"chardev=qmp0", NULL};
    d->version = q->version;
    d->proc = q_start(argv);
    d->qmp.fd = -1;
    if (q_qmp_connect(&d->qmp, sock) != 0) {
        char log[2048];
        CHECK(0, "QEMU %s: no QMP on %s: %s", q->version, sock,
              q_read_log(d->proc.log, log, sizeof log));
        d->qmp.fd = -1;
        return -1;
    }
    return 0;
}

static void daemon_stop(daemon_t *d) {
    if (d->qmp.fd >= 0) {
        char r[256];
        q_qmp_cmd(&d->qmp, "{\"execute\":\"quit\"}", r, sizeof r);
        close(d->qmp.fd);
        d->qmp.fd = -1;
    }
    q_stop(&d->proc);
}

/* One QMP change that must succeed: afterwards the image holds exactly
 * OURS | DAEMON (waited for, bounded: export removal may be asynchronous)
 * and fpl_query names the daemon as holder of DAEMON. */
static void live_step(daemon_t *d, const char *what, const char *img, const char *r,
                      unsigned ours, unsigned daemon) {
    CHECK(qmp_ok(r), "QEMU %s %s: %s", d->version, what, r);
    char a[128], b[128];
    CHECK(wait_locks(&d->proc, img, ours | daemon), "QEMU %s %s: bytes %s, want %s",
          d->version, what, q_bytes(proc_locks(img, NULL), a, sizeof a),
          q_bytes(ours | daemon, b, sizeof b));
    char label[160];
    snprintf(label, sizeof label, "QEMU %s %s", d->version, what);
    check_query(label, img, d->proc.pid, "qemu-storage-da", daemon, 0);
}

/* One QMP change that must be refused because libfpl (holding HELD) is in
 * the way of QEMU's request (PERM, SHARED): QEMU's message as predicted,
 * the daemon's state (STATE_CMD's reply) and the image's locks unchanged. */
static void live_refused(daemon_t *d, const char *what, const char *img, const char *cmd,
                         const char *state_cmd, unsigned held, unsigned perm, unsigned shared) {
    static char before[65536];
    char msg[128], a[128];
    int entries_before, entries_after;
    snprintf(before, sizeof before, "%s", qmp(&d->qmp, "%s", state_cmd));
    unsigned locks_before = proc_locks(img, &entries_before);
    CHECK(q_predict(held, perm, shared, 1, msg, sizeof msg) != 0,
          "QEMU %s %s: the protocol predicts no conflict", d->version, what);
    const char *r = qmp(&d->qmp, "%s", cmd);
    CHECK(qmp_fails_with(r, msg), "QEMU %s %s: want '%s', got %s", d->version, what, msg, r);
    printf("  QEMU %s %s -> %s\n", d->version, what, r);
    unsigned locks_after = proc_locks(img, &entries_after);
    CHECK(locks_after == locks_before && entries_after == entries_before,
          "QEMU %s %s: locks %s (%d entries), before %d entries", d->version, what,
          q_bytes(locks_after, a, sizeof a), entries_after, entries_before);
    r = qmp(&d->qmp, "%s", state_cmd);
    CHECK(strcmp(r, before) == 0, "QEMU %s %s: state changed:\n%s\n%s", d->version, what,
          before, r);
}

/* ---- 4. live changes ----------------------------------------------------- */

/* A QMP command: Q("\"query-block-exports\"") */
#define Q(text) "{\"execute\":" text "}"

static const char *ok_str(int failed_before) { return h_failed == failed_before ? "ok" : "FAILED"; }

static void test_live_changes(const q_qemu *q) {
    h_test = "live_changes";
    char name[64], j[PATH_MAX * 2], jr[PATH_MAX * 2], nbd[PATH_MAX], jn[PATH_MAX * 2];
    char cmd[16384], a[64], b[64];
    snprintf(name, sizeof name, "live-%s.qcow2", q->version);
    const char *img = q_create(q, name, "qcow2", NULL);
    snprintf(name, sizeof name, "live-%s.raw", q->version);
    const char *raw = h_image(name);
    snprintf(nbd, sizeof nbd, "%s/nbd-%s.sock", h_dir, q->version);
    jstr(img, j, sizeof j);
    jstr(raw, jr, sizeof jr);
    jstr(nbd, jn, sizeof jn);
    const unsigned rw = qemu_bytes(QCOW2_RW_PERM, QCOW2_RW_SHARE);
    const unsigned ro = qemu_bytes(QCOW2_RO_PERM, QCOW2_RO_SHARE);
    const unsigned nbd_rw = qemu_bytes(NBD_RW_PERM, NBD_SHARE);
    const unsigned nbd_ro = qemu_bytes(NBD_RO_PERM, NBD_SHARE);
    const unsigned our_read = OUR_BYTES(READ), our_write = OUR_BYTES(WRITE);
    const unsigned our_excl = OUR_BYTES(EXCLUSIVE);
    const char *nodes = Q("\"query-named-block-nodes\",\"arguments\":{\"flat\":true}");
    const char *exports = Q("\"query-block-exports\"");
    fpl_lock *lock = NULL;
    fpl_error err;
    const char *r;
    int rc;

    daemon_t d;
    if (daemon_start(&d, q) != 0) {
        daemon_stop(&d);
        return;
    }
    const pid_t daemon_pid = d.proc.pid;

    /* The daemon changes its permissions on the qcow2 image; fpl_query
     * follows each step. A file node alone takes no lock. */
    int failed = h_failed;
    live_step(&d, "blockdev-add file node", img,
              qmp(&d.qmp, Q("\"blockdev-add\",\"arguments\":{\"node-name\":\"f0\",\"driver\":"
                            "\"file\",\"filename\":\"%s\"}"), j),
              0, 0);
    live_step(&d, "blockdev-add qcow2 read-write", img,
              qmp(&d.qmp, Q("\"blockdev-add\",\"arguments\":{\"node-name\":\"q0\",\"driver\":"
                            "\"qcow2\",\"file\":\"f0\"}")),
              0, rw);
    live_step(&d, "blockdev-reopen read-only", img,
              qmp(&d.qmp, Q("\"blockdev-reopen\",\"arguments\":{\"options\":[{\"node-name\":"
                            "\"q0\",\"driver\":\"qcow2\",\"file\":\"f0\",\"read-only\":true}]}")),
              0, ro);
    live_step(&d, "blockdev-reopen read-write", img,
              qmp(&d.qmp, Q("\"blockdev-reopen\",\"arguments\":{\"options\":[{\"node-name\":"
                            "\"q0\",\"driver\":\"qcow2\",\"file\":\"f0\",\"read-only\":false}]}")),
              0, rw);
    live_step(&d, "blockdev-del qcow2", img,
              qmp(&d.qmp, Q("\"blockdev-del\",\"arguments\":{\"node-name\":\"q0\"}")), 0, 0);
    live_step(&d, "blockdev-del file", img,
              qmp(&d.qmp, Q("\"blockdev-del\",\"arguments\":{\"node-name\":\"f0\"}")), 0, 0);
    printf("QEMU %s live (qemu-storage-daemon pid %d over QMP): blockdev-add file (none), qcow2 "
           "rw [%s], reopen ro [%s], reopen rw, blockdev-del: fpl_query = /proc/locks with the "
           "daemon as holder at each step: %s\n",
           q->version, (int)daemon_pid, q_bytes(rw, a, sizeof a), q_bytes(ro, b, sizeof b),
           ok_str(failed));

    /* libfpl in the way: QEMU's commands fail with its own message and
     * change nothing. */
    failed = h_failed;
    rc = fpl_acquire(img, q_presets[READ].perm, q_presets[READ].shared, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    snprintf(cmd, sizeof cmd,
             Q("\"blockdev-add\",\"arguments\":{\"node-name\":\"q1\",\"driver\":\"qcow2\","
               "\"file\":{\"driver\":\"file\",\"node-name\":\"f2\",\"filename\":\"%s\"}}"), j);
    live_refused(&d, "blockdev-add qcow2 read-write under libfpl read", img, cmd, nodes,
                 our_read, QCOW2_RW_PERM, QCOW2_RW_SHARE);
    /* Read-only is compatible with libfpl's read. */
    live_step(&d, "blockdev-add qcow2 read-only beside libfpl read", img,
              qmp(&d.qmp, Q("\"blockdev-add\",\"arguments\":{\"node-name\":\"q1\",\"driver\":"
                            "\"qcow2\",\"read-only\":true,\"file\":{\"driver\":\"file\","
                            "\"node-name\":\"f2\",\"filename\":\"%s\"}}"), j),
              our_read, ro);
    check_query("libfpl read beside the daemon", img, getpid(), NULL, our_read, 0);
    snprintf(cmd, sizeof cmd,
             Q("\"blockdev-reopen\",\"arguments\":{\"options\":[{\"node-name\":\"q1\","
               "\"driver\":\"qcow2\",\"read-only\":false,\"file\":\"f2\"}]}"));
    live_refused(&d, "blockdev-reopen read-write under libfpl read", img, cmd, nodes,
                 our_read, QCOW2_RW_PERM, QCOW2_RW_SHARE);
    /* The daemon's only nodes now are q1 and its file f2. */
    r = qmp(&d.qmp, "%s", nodes);
    CHECK(strstr(r, "\"node-name\": \"q1\"") && strstr(r, "\"ro\": true") &&
              !strstr(r, "\"ro\": false"),
          "QEMU %s: q1 no longer read-only: %s", q->version, r);
    fpl_release(lock);
    live_step(&d, "blockdev-reopen read-write once libfpl left", img, qmp(&d.qmp, "%s", cmd), 0,
              rw);
    /* Now libfpl is the one refused, and it names the daemon. */
    rc = fpl_acquire(img, q_presets[READ].perm, q_presets[READ].shared, 0, &lock, &err);
    check_conflict("libfpl read under the daemon's read-write node", rc, &err, rw,
                   q_presets[READ].perm, q_presets[READ].shared, 0, daemon_pid, img);
    CHECK(strstr(err.message, "qemu-storage-da") != NULL, "holder not named: %s", err.message);
    if (rc == 0) fpl_release(lock);
    live_step(&d, "blockdev-del qcow2 with its file node", img,
              qmp(&d.qmp, Q("\"blockdev-del\",\"arguments\":{\"node-name\":\"q1\"}")), 0, 0);
    rc = fpl_acquire(img, q_presets[WRITE].perm, q_presets[WRITE].shared, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    snprintf(cmd, sizeof cmd,
             Q("\"blockdev-add\",\"arguments\":{\"node-name\":\"q2\",\"driver\":\"qcow2\","
               "\"read-only\":true,\"file\":{\"driver\":\"file\",\"filename\":\"%s\"}}"), j);
    live_refused(&d, "blockdev-add qcow2 read-only under libfpl write", img, cmd, nodes,
                 our_write, QCOW2_RO_PERM, QCOW2_RO_SHARE);
    fpl_release(lock);
    printf("QEMU %s live: blockdev-add rw and blockdev-reopen ro->rw under libfpl read, "
           "blockdev-add ro under libfpl write refused with the predicted message, nodes and "
           "locks unchanged; ro beside libfpl read admitted; libfpl read refused by the "
           "daemon's rw node, named: %s\n",
           q->version, ok_str(failed));

    /* NBD exports of a raw file node: the export's own permissions reach
     * the file (a qcow2 node already holds more than any export adds). */
    failed = h_failed;
    r = qmp(&d.qmp, Q("\"nbd-server-start\",\"arguments\":{\"addr\":{\"type\":\"unix\","
                      "\"data\":{\"path\":\"%s\"}}}"), jn);
    CHECK(qmp_ok(r), "QEMU %s nbd-server-start: %s", q->version, r);
    live_step(&d, "blockdev-add raw file node", raw,
              qmp(&d.qmp, Q("\"blockdev-add\",\"arguments\":{\"node-name\":\"f1\",\"driver\":"
                            "\"file\",\"filename\":\"%s\"}"), jr),
              0, 0);
    live_step(&d, "block-export-add writable", raw,
              qmp(&d.qmp, Q("\"block-export-add\",\"arguments\":{\"type\":\"nbd\",\"id\":\"e0\","
                            "\"name\":\"e0\",\"node-name\":\"f1\",\"writable\":true}")),
              0, nbd_rw);
    live_step(&d, "block-export-del writable", raw,
              qmp(&d.qmp, Q("\"block-export-del\",\"arguments\":{\"id\":\"e0\"}")), 0, 0);
    live_step(&d, "block-export-add read-only", raw,
              qmp(&d.qmp, Q("\"block-export-add\",\"arguments\":{\"type\":\"nbd\",\"id\":\"e1\","
                            "\"name\":\"e1\",\"node-name\":\"f1\",\"writable\":false}")),
              0, nbd_ro);
    live_step(&d, "block-export-del read-only", raw,
              qmp(&d.qmp, Q("\"block-export-del\",\"arguments\":{\"id\":\"e1\"}")), 0, 0);
    printf("QEMU %s live: NBD export of a raw file node writable [%s], removed, read-only "
           "[%s], removed: fpl_query = /proc/locks with the daemon as holder: %s\n",
           q->version, q_bytes(nbd_rw, a, sizeof a), q_bytes(nbd_ro, b, sizeof b),
           ok_str(failed));

    failed = h_failed;
    rc = fpl_acquire(raw, q_presets[READ].perm, q_presets[READ].shared, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    /* A read-only export is compatible with libfpl's read... */
    live_step(&d, "block-export-add read-only beside libfpl read", raw,
              qmp(&d.qmp, Q("\"block-export-add\",\"arguments\":{\"type\":\"nbd\",\"id\":\"e2\","
                            "\"name\":\"e2\",\"node-name\":\"f1\",\"writable\":false}")),
              our_read, nbd_ro);
    /* ...a writable one is not, and the read-only one stays. */
    live_refused(&d, "block-export-add writable under libfpl read", raw,
                 Q("\"block-export-add\",\"arguments\":{\"type\":\"nbd\",\"id\":\"e3\","
                   "\"name\":\"e3\",\"node-name\":\"f1\",\"writable\":true}"),
                 exports, our_read, NBD_RW_PERM, NBD_SHARE);
    r = qmp(&d.qmp, "%s", exports);
    CHECK(strstr(r, "\"id\": \"e2\"") && !strstr(r, "\"id\": \"e3\""), "QEMU %s exports: %s",
          q->version, r);
    live_step(&d, "block-export-del beside libfpl read", raw,
              qmp(&d.qmp, Q("\"block-export-del\",\"arguments\":{\"id\":\"e2\"}")), our_read, 0);
    fpl_release(lock);
    rc = fpl_acquire(raw, q_presets[EXCLUSIVE].perm, q_presets[EXCLUSIVE].shared, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    live_refused(&d, "block-export-add read-only under libfpl exclusive", raw,
                 Q("\"block-export-add\",\"arguments\":{\"type\":\"nbd\",\"id\":\"e3\","
                   "\"name\":\"e3\",\"node-name\":\"f1\",\"writable\":false}"),
                 exports, our_excl, NBD_RO_PERM, NBD_SHARE);
    r = qmp(&d.qmp, "%s", exports);
    CHECK(strncmp(r, "{\"return\": []}", 14) == 0, "QEMU %s exports: %s", q->version, r);
    fpl_release(lock);
    r = qmp(&d.qmp, Q("\"blockdev-del\",\"arguments\":{\"node-name\":\"f1\"}"));
    CHECK(qmp_ok(r), "QEMU %s blockdev-del f1: %s", q->version, r);
    daemon_stop(&d);
    CHECK(proc_locks(img, NULL) == 0 && proc_locks(raw, NULL) == 0,
          "locks left after the daemon quit");
    printf("QEMU %s live: read-only export beside libfpl read admitted; writable export "
           "under libfpl read (read-only export kept) and read-only export under libfpl "
           "exclusive refused with the predicted message, exports and locks unchanged: %s\n",
           q->version, ok_str(failed));
}

/* ---- 5. updates against QEMU --------------------------------------------- */

/* `qemu-io [-r] -f qcow2 IMG` reading commands from its stdin pipe: it
 * holds the image until q_stop closes the pipe. */
static q_proc qemu_io_hold(const q_qemu *q, const char *img, int readonly) {
    char *argv[6] = {(char *)q_tool(q, "qemu-io"), (char *)"-f", (char *)"qcow2", NULL};
    int n = 3;
    if (readonly) argv[n++] = (char *)"-r";
    argv[n++] = (char *)img;
    argv[n] = NULL;
    return q_start(argv);
}

/* Runs `qemu-io [-r] -f qcow2 -c quit IMG`: exit code, output in OUT. */
static int qemu_io_open(const q_qemu *q, const char *img, int readonly, char *out, size_t len) {
    char *argv[8] = {(char *)q_tool(q, "qemu-io"), (char *)"-f", (char *)"qcow2",
                     (char *)"-c", (char *)"quit", NULL};
    int n = 5;
    if (readonly) argv[n++] = (char *)"-r";
    argv[n++] = (char *)img;
    argv[n] = NULL;
    return q_run(argv, out, len, 30);
}

/* QEMU (PERM, SHARED) opening IMG while HELD is held must be refused with
 * the protocol's message and QEMU's hint, or admitted when none is predicted. */
static void check_qemu_open(const char *what, const q_qemu *q, const char *img, int readonly,
                            unsigned held) {
    char out[4096], msg[128], hint[PATH_MAX + 64];
    unsigned perm = readonly ? QCOW2_RO_PERM : QCOW2_RW_PERM;
    unsigned shared = readonly ? QCOW2_RO_SHARE : QCOW2_RW_SHARE;
    unsigned byte = q_predict(held, perm, shared, 1, msg, sizeof msg);
    int rc = qemu_io_open(q, img, readonly, out, sizeof out);
    if (!byte) {
        CHECK(rc == 0, "QEMU %s %s: rc %d: %s", q->version, what, rc, out);
        return;
    }
    snprintf(hint, sizeof hint, "Is another process using the image [%s]?", img);
    CHECK(rc != 0 && strstr(out, msg) && strstr(out, hint),
          "QEMU %s %s: rc %d, want '%s': %s", q->version, what, rc, msg, out);
    char *nl = strchr(out, '\n');
    if (nl) *nl = 0;
    printf("  QEMU %s %s -> rc %d: %s\n", q->version, what, rc, out);
}

static void test_updates(const q_qemu *q) {
    h_test = "updates";
    int failed = h_failed;
    char name[64], a[64];
    snprintf(name, sizeof name, "update-%s.qcow2", q->version);
    const char *img = q_create(q, name, "qcow2", NULL);
    const unsigned ro = qemu_bytes(QCOW2_RO_PERM, QCOW2_RO_SHARE);
    const unsigned rw = qemu_bytes(QCOW2_RW_PERM, QCOW2_RW_SHARE);

    q_proc reader = qemu_io_hold(q, img, 1);
    CHECK(wait_locks(&reader, img, ro), "QEMU %s reader: %s", q->version,
          q_bytes(proc_locks(img, NULL), a, sizeof a));
    int fd = open(img, O_RDONLY | O_CLOEXEC);
    if (fd < 0) h_die("open image");
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire_fd(fd, q_presets[READ].perm, q_presets[READ].shared, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    CHECK(h_fd_locks(fd) == OUR_BYTES(READ), "read: %s", q_bytes(h_fd_locks(fd), a, sizeof a));
    int before, after;
    unsigned mask_before = proc_locks(img, &before);
    /* read -> write while QEMU reads: refused, nothing moves. */
    for (unsigned flags = 0; flags <= FPL_FLAG_EXACT; flags++) {
        rc = fpl_update(lock, q_presets[WRITE].perm, q_presets[WRITE].shared, flags, &err);
        check_conflict("update read -> write beside qemu-io -r", rc, &err, ro,
                       q_presets[WRITE].perm, q_presets[WRITE].shared, flags, reader.pid, img);
        CHECK(rc != 0, "upgrade admitted");
        CHECK(err.perm == FPL_PERM_WRITE, "perm %u", err.perm);
        CHECK(strstr(err.message, "qemu-io") != NULL, "holder not named: %s", err.message);
        CHECK(h_fd_locks(fd) == OUR_BYTES(READ), "after refused update: %s",
              q_bytes(h_fd_locks(fd), a, sizeof a));
        unsigned mask_after = proc_locks(img, &after);
        CHECK(mask_after == mask_before && after == before,
              "after refused update: %d entries, %d before", after, before);
    }
    q_stop(&reader);
    CHECK(wait_locks(NULL, img, OUR_BYTES(READ)), "reader gone: %s",
          q_bytes(proc_locks(img, NULL), a, sizeof a));

    /* Alone, the upgrade goes through; QEMU's writer is then refused. */
    rc = fpl_update(lock, q_presets[WRITE].perm, q_presets[WRITE].shared, 0, &err);
    CHECK_RC(rc, 0, err);
    CHECK(h_fd_locks(fd) == OUR_BYTES(WRITE), "write: %s", q_bytes(h_fd_locks(fd), a, sizeof a));
    check_qemu_open("qemu-io read-write under libfpl write", q, img, 0, OUR_BYTES(WRITE));
    check_qemu_open("qemu-io -r under libfpl write", q, img, 1, OUR_BYTES(WRITE));
    /* write -> read-shared: the writer gets in. */
    rc = fpl_update(lock, q_presets[READ_SHARED].perm, q_presets[READ_SHARED].shared, 0, &err);
    CHECK_RC(rc, 0, err);
    CHECK(h_fd_locks(fd) == B(100), "read-shared: %s", q_bytes(h_fd_locks(fd), a, sizeof a));
    check_qemu_open("qemu-io read-write under libfpl read-shared", q, img, 0, B(100));
    CHECK(q_predict(B(100), QCOW2_RW_PERM, QCOW2_RW_SHARE, 1, a, sizeof a) == 0,
          "the protocol should admit the writer");

    /* With that writer holding, going back up to read is refused. */
    q_proc writer = qemu_io_hold(q, img, 0);
    CHECK(wait_locks(&writer, img, rw | B(100)), "QEMU %s writer: %s", q->version,
          q_bytes(proc_locks(img, NULL), a, sizeof a));
    proc_locks(img, &before);
    rc = fpl_update(lock, q_presets[READ].perm, q_presets[READ].shared, 0, &err);
    check_conflict("update read-shared -> read beside qemu-io writer", rc, &err, rw,
                   q_presets[READ].perm, q_presets[READ].shared, 0, writer.pid, img);
    CHECK(h_fd_locks(fd) == B(100), "after refused update: %s",
          q_bytes(h_fd_locks(fd), a, sizeof a));
    CHECK(proc_locks(img, &after) == (rw | B(100)) && after == before,
          "after refused update: %d entries, %d before", after, before);
    q_stop(&writer);
    CHECK(fpl_release(lock) == 0, "release");
    close(fd);
    CHECK(proc_locks(img, NULL) == 0, "locks left");
    printf("QEMU %s updates: read -> write refused beside qemu-io -r (EAGAIN, QEMU's message, "
           "qemu-io's pid, bytes unchanged, strict and exact); write refuses qemu-io rw and -r; "
           "write -> read-shared admits qemu-io rw; read-shared -> read refused beside it: %s\n",
           q->version, h_failed == failed ? "ok" : "FAILED");
}

/* ---- 6. per inode: symlinks and hard links --------------------------------- */

static void test_links(const q_qemu *q) {
    h_test = "links";
    int failed = h_failed;
    char name[64], sym[PATH_MAX], hard[PATH_MAX], a[64];
    snprintf(name, sizeof name, "inode-%s.qcow2", q->version);
    const char *real = q_create(q, name, "qcow2", NULL);
    snprintf(sym, sizeof sym, "%s/inode-%s.symlink", h_dir, q->version);
    snprintf(hard, sizeof hard, "%s/inode-%s.hardlink", h_dir, q->version);
    unlink(sym);
    unlink(hard);
    if (symlink(real, sym) != 0 || link(real, hard) != 0) h_die("link");
    const unsigned rw = qemu_bytes(QCOW2_RW_PERM, QCOW2_RW_SHARE);
    const char *links[2] = {sym, hard};
    const char *kinds[2] = {"symlink", "hard link"};
    for (int i = 0; i < 2; i++) {
        char what[128];
        /* QEMU through the link, libfpl through the real path. */
        q_proc qemu = qemu_io_hold(q, links[i], 0);
        CHECK(wait_locks(&qemu, real, rw), "QEMU %s via %s: %s", q->version, kinds[i],
              q_bytes(proc_locks(real, NULL), a, sizeof a));
        snprintf(what, sizeof what, "QEMU %s holding via %s, query of the real path", q->version,
                 kinds[i]);
        check_query(what, real, qemu.pid, "qemu-io", rw, 0);
        for (int p = READ_SHARED; p <= EXCLUSIVE; p++) {
            fpl_lock *lock = NULL;
            fpl_error err;
            int rc = fpl_acquire(real, q_presets[p].perm, q_presets[p].shared, 0, &lock, &err);
            snprintf(what, sizeof what, "QEMU %s via %s, libfpl %s via the real path",
                     q->version, kinds[i], q_presets[p].name);
            check_conflict(what, rc, &err, rw, q_presets[p].perm, q_presets[p].shared, 0,
                           qemu.pid, real);
            if (rc == 0) fpl_release(lock);
        }
        q_stop(&qemu);
        CHECK(wait_locks(NULL, real, 0), "qemu-io left locks");

        /* libfpl through the link, QEMU through the real path. */
        fpl_lock *lock = NULL;
        fpl_error err;
        int rc = fpl_acquire(links[i], q_presets[WRITE].perm, q_presets[WRITE].shared, 0, &lock,
                             &err);
        CHECK_RC(rc, 0, err);
        CHECK(proc_locks(real, NULL) == OUR_BYTES(WRITE), "via %s: %s", kinds[i],
              q_bytes(proc_locks(real, NULL), a, sizeof a));
        snprintf(what, sizeof what, "libfpl write via %s, query of the real path", kinds[i]);
        check_query(what, real, getpid(), NULL, OUR_BYTES(WRITE), 0);
        snprintf(what, sizeof what, "qemu-io rw of the real path, libfpl write via %s", kinds[i]);
        check_qemu_open(what, q, real, 0, OUR_BYTES(WRITE));
        snprintf(what, sizeof what, "qemu-io -r of the real path, libfpl write via %s", kinds[i]);
        check_qemu_open(what, q, real, 1, OUR_BYTES(WRITE));
        fpl_release(lock);
        snprintf(what, sizeof what, "qemu-io rw of the real path, libfpl gone from %s", kinds[i]);
        check_qemu_open(what, q, real, 0, 0);
    }
    printf("QEMU %s per inode: qemu-io via symlink and hard link seen by fpl_query and "
           "refusing every conflicting preset via the real path; libfpl write via each link "
           "refuses qemu-io rw and -r of the real path with QEMU's message: %s\n",
           q->version, h_failed == failed ? "ok" : "FAILED");
}

/* ---- 7. old QEMU (104/204) and libvirt (byte 0) ---------------------------- */

/* Helper roles of this binary: `legacy PATH` holds 104 and 204 as QEMU <= 6.2
 * did (OFD, F_RDLCK); `virtlockd PATH` holds byte 0 as libvirt's virtlockd
 * does (POSIX, F_WRLCK). Both hold until stdin closes. */
static int helper_main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[1], "legacy") != 0 && strcmp(argv[1], "virtlockd") != 0))
        return h_helper_main(argc, argv);
    int fd = open(argv[2], O_RDWR | O_CLOEXEC);
    int ok = fd >= 0;
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_whence = SEEK_SET;
    fl.l_len = 1;
    if (strcmp(argv[1], "legacy") == 0) {
        fl.l_type = F_RDLCK;
        fl.l_start = 104;
        ok = ok && fcntl(fd, F_OFD_SETLK, &fl) == 0;
        fl.l_start = 204;
        ok = ok && fcntl(fd, F_OFD_SETLK, &fl) == 0;
    } else {
        fl.l_type = F_WRLCK;
        fl.l_start = 0;
        ok = ok && fcntl(fd, F_SETLK, &fl) == 0;
    }
    printf(ok ? "ok\n" : "err\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    return 0;
}

/* Every preset, strict and exact, on a fresh description of IMG: admitted
 * (or refused as predicted against QEMU's bytes QEMU_HELD), and never
 * locking byte 0 or 104/204. */
static void check_presets_ignore(const char *who, const char *img, unsigned qemu_held,
                                 pid_t qemu_pid, unsigned others) {
    char what[160], a[64];
    for (int p = READ_SHARED; p <= EXCLUSIVE; p++)
        for (unsigned flags = 0; flags <= FPL_FLAG_EXACT; flags++) {
            int fd = open(img, O_RDONLY | O_CLOEXEC);
            if (fd < 0) h_die("open image");
            fpl_lock *lock = NULL;
            fpl_error err;
            int rc = fpl_acquire_fd(fd, q_presets[p].perm, q_presets[p].shared, flags, &lock,
                                    &err);
            snprintf(what, sizeof what, "%s: %s%s", who, q_presets[p].name,
                     flags ? " exact" : "");
            check_conflict(what, rc, &err, qemu_held, q_presets[p].perm, q_presets[p].shared,
                           flags, qemu_pid, img);
            if (rc == 0) {
                unsigned want = q_plan(q_presets[p].perm, q_presets[p].shared, flags).lock;
                CHECK(h_fd_locks(fd) == want, "%s: locked %s", what,
                      q_bytes(h_fd_locks(fd), a, sizeof a));
                CHECK(proc_locks(img, NULL) == (want | qemu_held | others), "%s: %s",
                      what, q_bytes(proc_locks(img, NULL), a, sizeof a));
                CHECK(fpl_release(lock) == 0, "release");
            } else {
                CHECK(h_fd_locks(fd) == 0, "%s: left %s", what,
                      q_bytes(h_fd_locks(fd), a, sizeof a));
            }
            CHECK(fpl_check(img, q_presets[p].perm, q_presets[p].shared, flags, &err) == rc,
                  "%s: fpl_check disagrees with fpl_acquire: %s", what, err.message);
            close(fd);
        }
}

static void test_legacy_and_libvirt(const q_qemu *q) {
    h_test = "legacy_and_libvirt";
    int failed = h_failed;
    char name[64], a[64], what[128];
    snprintf(name, sizeof name, "old-%s.qcow2", q->version);
    const char *img = q_create(q, name, "qcow2", NULL);
    const unsigned rw = qemu_bytes(QCOW2_RW_PERM, QCOW2_RW_SHARE);
    struct {
        const char *role, *who;
        unsigned bytes, flags;
    } roles[3] = {
        {"legacy", "QEMU <= 6.2's graph-mod (104/204)", LEGACY_BYTES, FPL_STATUS_LEGACY},
        {"virtlockd", "virtlockd's byte 0", B(0), FPL_STATUS_LIBVIRT},
        {"raw", "both", LEGACY_BYTES | B(0), FPL_STATUS_LEGACY | FPL_STATUS_LIBVIRT},
    };
    for (int i = 0; i < 3; i++) {
        h_helper other;
        char *argv[] = {(char *)h_self, (char *)roles[i].role, (char *)img, NULL};
        CHECK(h_spawn(&other, argv) == 0, "helper %s: %s", roles[i].role, other.reply);
        CHECK(proc_locks(img, NULL) == roles[i].bytes, "%s holds %s", roles[i].role,
              q_bytes(proc_locks(img, NULL), a, sizeof a));
        snprintf(what, sizeof what, "%s alone", roles[i].who);
        fpl_status st = check_query(what, img, other.pid, NULL, 0, 1);
        CHECK((st.flags & (FPL_STATUS_LEGACY | FPL_STATUS_LIBVIRT)) == roles[i].flags &&
                  st.perm == 0 && st.unshared == 0,
              "%s: flags %u perm %u unshared %u", what, st.flags, st.perm, st.unshared);
        check_presets_ignore(what, img, 0, -1, roles[i].bytes);

        /* QEMU opens read-write beside them, and libfpl's answers are
         * exactly those for QEMU alone. */
        snprintf(what, sizeof what, "qemu-io rw beside %s", roles[i].who);
        check_qemu_open(what, q, img, 0, 0);
        q_proc qemu = qemu_io_hold(q, img, 0);
        CHECK(wait_locks(&qemu, img, rw | roles[i].bytes), "QEMU %s beside %s: %s",
              q->version, roles[i].role, q_bytes(proc_locks(img, NULL), a, sizeof a));
        snprintf(what, sizeof what, "QEMU %s holding beside %s", q->version, roles[i].who);
        st = check_query(what, img, qemu.pid, "qemu-io", rw, 0);
        CHECK((st.flags & (FPL_STATUS_LEGACY | FPL_STATUS_LIBVIRT)) == roles[i].flags,
              "%s: flags %u", what, st.flags);
        check_query(what, img, other.pid, NULL, 0, 1);
        check_presets_ignore(what, img, rw, qemu.pid, roles[i].bytes);
        q_stop(&qemu);
        CHECK(h_finish(&other) == 0, "helper %s exit", roles[i].role);
        CHECK(wait_locks(NULL, img, 0), "locks left: %s",
              q_bytes(proc_locks(img, NULL), a, sizeof a));
    }
    printf("QEMU %s old QEMU and libvirt: 104/204 (OFD) set FPL_STATUS_LEGACY, byte 0 (POSIX "
           "write) sets FPL_STATUS_LIBVIRT; every preset, strict and exact, admitted beside "
           "them without locking 0/104/204; qemu-io rw opens beside them and libfpl's answers "
           "with QEMU holding too are those for QEMU alone: %s\n",
           q->version, h_failed == failed ? "ok" : "FAILED");
}

int main(int argc, char **argv) {
    h_self = "/proc/self/exe";
    if (argc > 1) return helper_main(argc, argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    atexit(q_kill_all);
    h_init();
    q_load_versions();
    for (int i = 0; i < q_nversions; i++) {
        const q_qemu *q = &q_versions[i];
        if (q_has_tool(q, "qemu-storage-daemon"))
            test_live_changes(q);
        else
            printf("QEMU %s has no qemu-storage-daemon in %s: live changes not covered\n",
                   q->version, q->dir);
        test_updates(q);
        test_links(q);
        test_legacy_and_libvirt(q);
    }
    printf("%d passed, %d failed\n", h_passed, h_failed);
    return h_failed == 0 ? 0 : 1;
}
