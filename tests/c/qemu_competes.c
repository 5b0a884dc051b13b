/* libfpl holds, QEMU competes: for every libfpl preset held on a qcow2
 * image, the QEMU commands of qemu-iotests 153 (qemu-io, every qemu-img
 * subcommand that opens the image, qemu-nbd, a VM) are run against it on
 * each QEMU version the runner provides (10.0 and 7.2). Each one must be
 * admitted or refused exactly as the protocol predicts, refused with QEMU's
 * own message, and leave libfpl's lock untouched.
 *
 * The expected outcomes come from the table below (what each command takes
 * on the image file, read from QEMU's source) and q_predict (the protocol,
 * qemu_harness.h), computed before anything runs. Run by tests/qemu_compat.rs
 * (libfpl_holds_qemu_competes). FPL_MATRIX_OUT, when set, names a file that
 * receives the outcome matrix in Markdown. */
#include "qemu_harness.h"

#define ALL_PERMS (P_CR | P_W | P_WU | P_RS)

/* ---- what each QEMU command takes on the image file ---------------------
 * QEMU's permissions on a qcow2 image's *file* (block.c,
 * bdrv_default_perms_for_storage; block-backend.c, blk_new_open):
 *  - the qcow2 driver passes its users' perm/shared down to the file, then
 *    adds CONSISTENT_READ (unless the open has BDRV_O_NO_IO), adds
 *    WRITE|RESIZE when the image is opened read-write (metadata updates),
 *    and always stops sharing WRITE and RESIZE (metadata must not change
 *    under it). The users (BlockBackends) never take WRITE_UNCHANGED and
 *    share at most everything, so:
 *      read-write open:  perm CR|W|RS  shared CR|WU  locks 100,101,103,201,203
 *      read-only open:   perm CR       shared CR|WU  locks 100,201,203
 *  - force-share (-U, read-only only) makes the file share everything
 *    (bdrv_child_perm: child_bs->force_share => nshared = ALL):
 *                        perm CR       shared all    locks 100
 *  - qemu-img info opens with BDRV_O_NO_IO|BDRV_O_NO_BACKING: no CR, but
 *    still refuses write and resize: perm 0, shared CR|WU, locks 201,203,
 *    tests 101,103. With -U it locks and tests nothing at all.
 *  - qemu-img flags: check, compare (both images), map, convert (source,
 *    BDRV_O_NO_SHARE since QEMU 6.1, which shares CR|WU: no change on the
 *    file), snapshot -l, bench are read-only; commit (BDRV_O_RDWR, its
 *    commit job adds nothing on the file), resize (RDWR|RESIZE), amend,
 *    rebase (RDWR; -U only force-shares the backing files) and bench -w are
 *    read-write; qemu-io opens read-write unless -r. bench -w -U (like
 *    qemu-io -U without -r, 153.out) is rejected before any lock
 *    ("force-share=on can only be used with read-only images"): a usage
 *    error whatever is held. commit/resize/amend/create have no -U.
 *  - qemu-img create over an existing file (block/file-posix.c,
 *    raw_co_create) first takes perm WRITE|RESIZE sharing all but RESIZE
 *    (locks 101,103,203, tests 201,203,103) and tests BEFORE it truncates;
 *    only then does qcow2 format the file through further opens: the
 *    protocol node read-write sharing all (101,103), the new qcow2 read-
 *    write, and a last one without CR (101,103,201,203).
 *  - qemu-nbd exports read-write unless -r (qemu-nbd has no -U); a VM
 *    (qemu-system-x86_64, -drive if=virtio) opens read-write unless
 *    readonly=on, and its virtio-blk device (share-rw=off) shares CR|WU;
 *    attaching the device re-locks the same bytes without a new test.
 * Each of these sets was also watched with strace on both versions (holding
 * nothing): every lock and F_OFD_GETLK test on top.qcow2 is exactly the
 * sets below, in this order (compare opens the image twice, create four
 * times). QEMU tests byte 200+i for each bit it uses, then 100+i for each
 * bit it does not share, and reports the first conflict: q_predict does the
 * same, and QEMU is always "exact" (no strict rules). A command's steps
 * never conflict with each other. */
typedef struct {
    unsigned perm, shared;
} step_t;

enum kind {
    RUNS,   /* runs to completion: admitted = exit 0 */
    SERVER, /* long-running: admitted = its locks appear; refused = it exits */
    USAGE,  /* rejected before locking anything, whatever is held */
};

#define USAGE_MSG "force-share=on can only be used with read-only images"

typedef struct {
    const char *label;
    const char *tool;
    enum kind kind;
    int rw;     /* opens the image read-write: recreate the images after it ran */
    int nsteps; /* permission sets on top.qcow2's file, in the order QEMU tests them */
    step_t steps[4];
    const char *args[12]; /* after the tool; @TOP @BASE @CONV @SOCK are replaced */
} cmd_t;

#define RW {P_CR | P_W | P_RS, P_CR | P_WU}
#define RO {P_CR, P_CR | P_WU}
#define RO_U {P_CR, ALL_PERMS}

static const cmd_t cmds[] = {
    {"qemu-io (read-write)", "qemu-io", RUNS, 1, 1, {RW}, {"-c", "read 0 512", "@TOP"}},
    {"qemu-io -r", "qemu-io", RUNS, 0, 1, {RO}, {"-r", "-c", "read 0 512", "@TOP"}},
    {"qemu-io -U -r", "qemu-io", RUNS, 0, 1, {RO_U}, {"-U", "-r", "-c", "read 0 512", "@TOP"}},
    {"qemu-img info", "qemu-img", RUNS, 0, 1, {{0, P_CR | P_WU}}, {"info", "@TOP"}},
    {"qemu-img info -U", "qemu-img", RUNS, 0, 1, {{0, ALL_PERMS}}, {"info", "-U", "@TOP"}},
    {"qemu-img check", "qemu-img", RUNS, 0, 1, {RO}, {"check", "@TOP"}},
    {"qemu-img check -U", "qemu-img", RUNS, 0, 1, {RO_U}, {"check", "-U", "@TOP"}},
    {"qemu-img compare", "qemu-img", RUNS, 0, 2, {RO, RO}, {"compare", "@TOP", "@TOP"}},
    {"qemu-img compare -U", "qemu-img", RUNS, 0, 2, {RO_U, RO_U},
     {"compare", "-U", "@TOP", "@TOP"}},
    {"qemu-img map", "qemu-img", RUNS, 0, 1, {RO}, {"map", "@TOP"}},
    {"qemu-img map -U", "qemu-img", RUNS, 0, 1, {RO_U}, {"map", "-U", "@TOP"}},
    {"qemu-img convert (source)", "qemu-img", RUNS, 0, 1, {RO},
     {"convert", "-O", "qcow2", "@TOP", "@CONV"}},
    {"qemu-img convert -U (source)", "qemu-img", RUNS, 0, 1, {RO_U},
     {"convert", "-U", "-O", "qcow2", "@TOP", "@CONV"}},
    {"qemu-img commit", "qemu-img", RUNS, 1, 1, {RW}, {"commit", "@TOP"}},
    {"qemu-img resize", "qemu-img", RUNS, 1, 1, {RW}, {"resize", "@TOP", "48M"}},
    {"qemu-img amend", "qemu-img", RUNS, 1, 1, {RW}, {"amend", "-o", "size=48M", "@TOP"}},
    {"qemu-img rebase", "qemu-img", RUNS, 1, 1, {RW},
     {"rebase", "-b", "@BASE", "-F", "qcow2", "@TOP"}},
    {"qemu-img rebase -U", "qemu-img", RUNS, 1, 1, {RW},
     {"rebase", "-U", "-b", "@BASE", "-F", "qcow2", "@TOP"}},
    {"qemu-img snapshot -l", "qemu-img", RUNS, 0, 1, {RO}, {"snapshot", "-l", "@TOP"}},
    {"qemu-img snapshot -l -U", "qemu-img", RUNS, 0, 1, {RO_U}, {"snapshot", "-l", "-U", "@TOP"}},
    {"qemu-img create (over the image)", "qemu-img", RUNS, 1, 4,
     {{P_W | P_RS, ALL_PERMS & ~P_RS}, {P_W | P_RS, ALL_PERMS}, RW, {P_W | P_RS, P_CR | P_WU}},
     {"create", "-q", "-f", "qcow2", "-b", "@BASE", "-F", "qcow2", "@TOP"}},
    {"qemu-img bench", "qemu-img", RUNS, 0, 1, {RO}, {"bench", "-c", "1", "@TOP"}},
    {"qemu-img bench -U", "qemu-img", RUNS, 0, 1, {RO_U}, {"bench", "-U", "-c", "1", "@TOP"}},
    {"qemu-img bench -w", "qemu-img", RUNS, 1, 1, {RW}, {"bench", "-w", "-c", "1", "@TOP"}},
    {"qemu-img bench -w -U", "qemu-img", USAGE, 0, 0, {{0, 0}},
     {"bench", "-w", "-U", "-c", "1", "@TOP"}},
    {"qemu-nbd (read-write export)", "qemu-nbd", SERVER, 1, 1, {RW},
     {"-k", "@SOCK", "-f", "qcow2", "@TOP"}},
    {"qemu-nbd -r", "qemu-nbd", SERVER, 0, 1, {RO}, {"-r", "-k", "@SOCK", "-f", "qcow2", "@TOP"}},
    {"VM (qemu-system-x86_64, read-write drive)", "qemu-system-x86_64", SERVER, 1, 1, {RW},
     {"-M", "q35", "-accel", "tcg", "-S", "-display", "none", "-nodefaults", "-drive",
      "file=@TOP,if=virtio,format=qcow2"}},
    {"VM (qemu-system-x86_64, readonly=on drive)", "qemu-system-x86_64", SERVER, 0, 1, {RO},
     {"-M", "q35", "-accel", "tcg", "-S", "-display", "none", "-nodefaults", "-drive",
      "file=@TOP,if=virtio,format=qcow2,readonly=on"}},
};
#define NCMDS (sizeof cmds / sizeof cmds[0])

/* What libfpl holds for each preset (PROTOCOL.md §4; q_presets' order). */
static const unsigned preset_bytes[4] = {
    B(100),                                               /* read-shared */
    B(100) | B(201) | B(202) | B(203),                    /* read */
    B(100) | B(101) | B(103) | B(201) | B(202) | B(203),  /* write */
    B(100) | B(101) | B(103) | B(200) | B(201) | B(202) | B(203), /* exclusive */
};

/* ---- the prediction, fixed before any run ---------------------------- */
static int expect_refused[NCMDS][4];
static char expect_msg[NCMDS][4][96];

static void predict_all(void) {
    for (size_t c = 0; c < NCMDS; c++)
        for (int p = 0; p < 4; p++) {
            char *msg = expect_msg[c][p];
            msg[0] = 0;
            if (cmds[c].kind == USAGE) {
                expect_refused[c][p] = 1;
                snprintf(msg, sizeof expect_msg[0][0], "%s", USAGE_MSG);
                continue;
            }
            for (int s = 0; s < cmds[c].nsteps && !expect_refused[c][p]; s++)
                expect_refused[c][p] = q_predict(preset_bytes[p], cmds[c].steps[s].perm,
                                                 cmds[c].steps[s].shared, 1, msg,
                                                 sizeof expect_msg[0][0]) != 0;
        }
}

/* ---- images ------------------------------------------------------------ */
static char top[PATH_MAX], base[PATH_MAX], conv[PATH_MAX], sock[PATH_MAX];

/* base.qcow2 (32M) and top.qcow2 on it, made by Q's own qemu-img. */
static void make_images(const q_qemu *q) {
    char out[4096];
    unlink(top);
    unlink(base);
    char *a[] = {(char *)q_tool(q, "qemu-img"), (char *)"create", (char *)"-q", (char *)"-f",
                 (char *)"qcow2", base, (char *)"32M", NULL};
    char *b[] = {(char *)q_tool(q, "qemu-img"), (char *)"create", (char *)"-q", (char *)"-f",
                 (char *)"qcow2", (char *)"-b", base, (char *)"-F", (char *)"qcow2", top, NULL};
    if (q_run(a, out, sizeof out, 30) != 0 || q_run(b, out, sizeof out, 30) != 0) {
        fprintf(stderr, "creating %s on %s failed: %s\n", top, base, out);
        exit(2);
    }
}

/* Size and modification time, to see that a command left the image alone. */
static char *file_state(const char *path, char *buf, size_t len) {
    struct stat st;
    if (stat(path, &st) != 0) snprintf(buf, len, "(missing)");
    else
        snprintf(buf, len, "size %lld mtime %lld.%09ld", (long long)st.st_size,
                 (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    return buf;
}

static int is_qcow2(const char *path) {
    unsigned char m[4] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, m, 4);
    close(fd);
    return n == 4 && m[0] == 'Q' && m[1] == 'F' && m[2] == 'I' && m[3] == 0xfb;
}

/* ARG with @TOP, @BASE, @CONV, @SOCK replaced, in a static slot. */
static char *subst(const char *arg) {
    static char slots[16][PATH_MAX + 64];
    static int next;
    char *o = slots[next++ % 16];
    size_t n = 0;
    o[0] = 0;
    while (*arg && n < sizeof slots[0] - 1) {
        const char *rep = NULL;
        size_t skip = 0;
        if (strncmp(arg, "@TOP", 4) == 0) rep = top, skip = 4;
        else if (strncmp(arg, "@BASE", 5) == 0) rep = base, skip = 5;
        else if (strncmp(arg, "@CONV", 5) == 0) rep = conv, skip = 5;
        else if (strncmp(arg, "@SOCK", 5) == 0) rep = sock, skip = 5;
        if (rep) {
            n += (size_t)snprintf(o + n, sizeof slots[0] - n, "%s", rep);
            arg += skip;
        } else {
            o[n++] = *arg++;
            o[n] = 0;
        }
    }
    return o;
}

static int live_processes(void) {
    int n = 0;
    for (int i = 0; i < 64; i++) n += q_live[i] > 0;
    return n;
}

/* QEMU's message in OUT: its lock error ("Failed to get ..." / "Failed to
 * lock byte ..."), else the usage error, else the first line. */
static void qemu_message(const char *out, char *msg, size_t len) {
    const char *s = strstr(out, "Failed to get ");
    if (!s) s = strstr(out, "Failed to lock byte");
    if (!s) s = strstr(out, USAGE_MSG);
    if (!s) s = out;
    size_t n = strcspn(s, "\n");
    if (n > 120) n = 120;
    snprintf(msg, len, "%.*s", (int)n, s);
}

/* The bytes on top.qcow2 in /proc/locks, once they settle at WANT.
 * /proc/locks is no atomic snapshot: read in several chunks while other
 * processes on the machine lock and unlock, it can miss entries (seen
 * under load: "bytes none" right after a successful fpl_acquire, while
 * fpl_query saw them). A state that is really wrong stays wrong over the
 * re-reads. */
static unsigned settled_bytes(unsigned want) {
    unsigned now = 0;
    for (int i = 0; i < 10; i++) {
        now = h_proc_locks(h_ino(top), NULL);
        if (now == want) break;
        q_sleep_ms(20);
    }
    return now;
}

/* The bytes of a holder as an h_proc_locks mask. */
static unsigned holder_mask(unsigned perm, unsigned unshared) {
    unsigned m = 0;
    for (unsigned i = 0; i < 4; i++) {
        if (perm & (1u << i)) m |= B(100 + i);
        if (unshared & (1u << i)) m |= B(200 + i);
    }
    return m;
}

/* libfpl's lock is still exactly the preset's bytes, seen by the kernel
 * and by fpl_query, and nobody else holds anything. */
static void check_held(unsigned want, const char *when) {
    unsigned now = settled_bytes(want);
    char b1[64], b2[64];
    CHECK(now == want, "%s: bytes %s, want %s", when, q_bytes(now, b1, sizeof b1),
          q_bytes(want, b2, sizeof b2));
    fpl_status st;
    fpl_holder hs[8];
    fpl_error err;
    int rc = fpl_query(top, FPL_QUERY_HOLDERS, &st, hs, 8, &err);
    CHECK_RC(rc, 0, err);
    CHECK(rc == 0 && st.n_holders == 1 && hs[0].pid == getpid() &&
              holder_mask(hs[0].perm, hs[0].unshared) == want,
          "%s: fpl_query: %u holders, first pid %d (self %d) bytes %s", when, st.n_holders,
          st.n_holders ? hs[0].pid : -1, (int)getpid(),
          st.n_holders ? q_bytes(holder_mask(hs[0].perm, hs[0].unshared), b1, sizeof b1) : "-");
}

/* ---- one run ------------------------------------------------------------ */
static char observed[4][NCMDS][4][160]; /* [version][cmd][preset]: "ok" or "refused: ..." */
static int ran_on[4][NCMDS];
static char test_name[256];

static void run_one(int v, size_t c, int p) {
    const q_qemu *q = &q_versions[v];
    const cmd_t *cmd = &cmds[c];
    const unsigned held = preset_bytes[p];
    snprintf(test_name, sizeof test_name, "QEMU %.15s %.100s vs %.20s", q->version, cmd->label,
             q_presets[p].name);
    h_test = test_name;

    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire(top, q_presets[p].perm, q_presets[p].shared, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    if (rc != 0) return;
    check_held(held, "before");
    char state_before[96], state_after[96];
    file_state(top, state_before, sizeof state_before);

    char *argv[16];
    int n = 0;
    argv[n++] = (char *)q_tool(q, cmd->tool);
    for (int i = 0; cmd->args[i]; i++) argv[n++] = subst(cmd->args[i]);
    argv[n] = NULL;

    static char out[65536];
    int admitted, status = 0;
    out[0] = 0;
    if (cmd->kind == SERVER) {
        /* Admitted = its locks (those of its last, lasting permission set)
         * appear beside libfpl's and stay for 150 ms: QEMU locks before it
         * tests, so the union may show for a moment even when it is refused.
         * Refused = it exits. */
        unsigned theirs = q_plan(cmd->steps[cmd->nsteps - 1].perm,
                                 cmd->steps[cmd->nsteps - 1].shared, 1).lock;
        unlink(sock);
        q_proc proc = q_start(argv);
        int exited = 0, seen = 0;
        for (int i = 0; i < 1500 && seen < 15; i++) {
            if (!q_running(&proc, &status)) {
                exited = 1;
                break;
            }
            seen = h_proc_locks(h_ino(top), NULL) == (held | theirs) ? seen + 1 : 0;
            q_sleep_ms(10);
        }
        admitted = !exited && seen >= 15;
        if (!exited) {
            char b1[64];
            CHECK(admitted, "still running after 15 s, bytes %s",
                  q_bytes(h_proc_locks(h_ino(top), NULL), b1, sizeof b1));
            q_stop(&proc);
        } else {
            CHECK(WIFEXITED(status) && WEXITSTATUS(status) != 0, "exited with status %#x",
                  (unsigned)status);
        }
        q_read_log(proc.log, out, sizeof out);
    } else {
        rc = q_run(argv, out, sizeof out, 60);
        admitted = rc == 0;
    }

    char got[160], msg[140];
    qemu_message(out, msg, sizeof msg);
    if (admitted) snprintf(got, sizeof got, "ok");
    else snprintf(got, sizeof got, "refused: %s", msg);
    snprintf(observed[v][c][p], sizeof observed[0][0][0], "%s", got);
    ran_on[v][c] = 1;

    const int want_refused = expect_refused[c][p];
    const char *want = expect_msg[c][p];
    CHECK(admitted == !want_refused, "%s, predicted %s%s; output: %s",
          admitted ? "admitted" : "refused", want_refused ? "refused: " : "admitted",
          want_refused ? want : "", out);
    if (!admitted && want_refused) {
        CHECK(strstr(out, want) != NULL, "message, want '%s' in: %s", want, out);
        if (cmd->kind != USAGE) {
            char hint[PATH_MAX + 64];
            snprintf(hint, sizeof hint, "Is another process using the image [%s]?", top);
            CHECK(strstr(out, hint) != NULL, "hint, want '%s' in: %s", hint, out);
        } else {
            CHECK(strstr(out, "Is another process") == NULL, "usage error mentions locks: %s",
                  out);
        }
    }
    if (admitted && want_refused == 0)
        printf("QEMU %s %s vs %s: admitted as predicted\n", q->version, cmd->label,
               q_presets[p].name);
    else if (!admitted && want_refused && strstr(out, want))
        printf("QEMU %s %s vs %s: refused (%s) as predicted\n", q->version, cmd->label,
               q_presets[p].name, want);
    else
        printf("QEMU %s %s vs %s: %s, but predicted %s%s -- UNEXPECTED\n", q->version,
               cmd->label, q_presets[p].name, got, want_refused ? "refused: " : "admitted",
               want_refused ? want : "");

    /* Afterwards: nothing left running, libfpl's bytes exactly as before,
     * a refused or read-only command left the image as it was. */
    CHECK(live_processes() == 0, "%d QEMU processes left running", live_processes());
    check_held(held, "after");
    if (!admitted || !cmd->rw)
        CHECK(is_qcow2(top) &&
                  strcmp(file_state(top, state_after, sizeof state_after), state_before) == 0,
              "image changed: qcow2 %d, %s -> %s", is_qcow2(top), state_before, state_after);
    CHECK(fpl_release(lock) == 0, "release");
    CHECK(settled_bytes(0) == 0, "bytes left after release");
    unlink(conv);
    if (cmd->rw && admitted) make_images(q); /* create truncated it, others wrote */
}

/* ---- the matrix --------------------------------------------------------- */
/* CMD's command line for the matrix, with the file names short. */
static const char *cmdline(const cmd_t *cmd, char *buf, size_t len) {
    snprintf(buf, len, "%s", cmd->tool);
    for (int i = 0; cmd->args[i]; i++) {
        char arg[128];
        const char *a = cmd->args[i];
        size_t n = 0;
        arg[0] = 0;
        while (*a && n < sizeof arg - 16) {
            static const char *const names[][2] = {{"@TOP", "top.qcow2"},
                                                   {"@BASE", "base.qcow2"},
                                                   {"@CONV", "copy.qcow2"},
                                                   {"@SOCK", "nbd.sock"}};
            size_t k = 0;
            for (; k < 4; k++)
                if (strncmp(a, names[k][0], strlen(names[k][0])) == 0) break;
            if (k < 4) {
                n += (size_t)snprintf(arg + n, sizeof arg - n, "%s", names[k][1]);
                a += strlen(names[k][0]);
            } else {
                arg[n++] = *a++;
                arg[n] = 0;
            }
        }
        size_t l = strlen(buf);
        snprintf(buf + l, len - l, strchr(arg, ' ') ? " '%s'" : " %s", arg);
    }
    return buf;
}

static void write_matrix(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) {
        CHECK(0, "cannot write %s: %s", path, strerror(errno));
        return;
    }
    fprintf(f, "| QEMU command (top.qcow2 on base.qcow2) | QEMU | its locks on the image |");
    for (int p = 0; p < 4; p++) {
        char b[64];
        fprintf(f, " libfpl %s (%s) |", q_presets[p].name, q_bytes(preset_bytes[p], b, sizeof b));
    }
    fprintf(f, "\n|---|---|---|---|---|---|---|\n");
    for (size_t c = 0; c < NCMDS; c++) {
        char versions[64] = "", bytes[64];
        for (int v = 0; v < q_nversions; v++)
            if (ran_on[v][c]) {
                size_t l = strlen(versions);
                snprintf(versions + l, sizeof versions - l, "%s%.15s", l ? ", " : "",
                         q_versions[v].version);
            }
        if (!versions[0]) continue;
        if (cmds[c].kind == USAGE)
            snprintf(bytes, sizeof bytes, "none (usage error)");
        else
            q_bytes(q_plan(cmds[c].steps[0].perm, cmds[c].steps[0].shared, 1).lock, bytes,
                    sizeof bytes);
        char line[512];
        fprintf(f, "| `%s` | %s | %s%s |", cmdline(&cmds[c], line, sizeof line), versions, bytes,
                cmds[c].nsteps > 2 ? " first, then those of the new image" : "");
        for (int p = 0; p < 4; p++) {
            /* One cell when every version agrees, else one entry per version. */
            const char *first = NULL;
            int same = 1;
            for (int v = 0; v < q_nversions; v++)
                if (ran_on[v][c]) {
                    if (!first) first = observed[v][c][p];
                    else if (strcmp(first, observed[v][c][p]) != 0) same = 0;
                }
            if (same) {
                fprintf(f, " %s |", first);
            } else {
                for (int v = 0; v < q_nversions; v++)
                    if (ran_on[v][c])
                        fprintf(f, " %s: %s;", q_versions[v].version, observed[v][c][p]);
                fprintf(f, " |");
            }
        }
        fprintf(f, "\n");
    }
    fclose(f);
}

int main(void) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    h_make_dir();
    atexit(q_kill_all);
    q_load_versions();
    predict_all(); /* fixed before any QEMU runs */
    snprintf(top, sizeof top, "%s/top.qcow2", h_dir);
    snprintf(base, sizeof base, "%s/base.qcow2", h_dir);
    snprintf(conv, sizeof conv, "%s/conv.qcow2", h_dir);
    snprintf(sock, sizeof sock, "%s/nbd.sock", h_dir);
    if (strlen(sock) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "socket path too long: %s\n", sock);
        return 2;
    }

    char used[2048] = "";
    for (int v = 0; v < q_nversions; v++) {
        const q_qemu *q = &q_versions[v];
        char out[4096];
        char *ver[] = {(char *)q_tool(q, "qemu-img"), (char *)"--version", NULL};
        q_run(ver, out, sizeof out, 30);
        out[strcspn(out, "\n")] = 0;
        size_t l = strlen(used);
        snprintf(used + l, sizeof used - l, "%s%.15s (%.200s)", l ? ", " : "", q->version,
                 out);

        make_images(q);
        for (int p = 0; p < 4; p++)
            for (size_t c = 0; c < NCMDS; c++) {
                /* Every tool this version has; only the VM may be absent
                 * (QEMU 10 comes without qemu-system here). */
                if (strcmp(cmds[c].tool, "qemu-system-x86_64") == 0 &&
                    !q_has_tool(q, cmds[c].tool))
                    continue;
                run_one(v, c, p);
            }
    }

    const char *matrix = getenv("FPL_MATRIX_OUT");
    if (matrix && *matrix) write_matrix(matrix);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("QEMU versions: %s\n", used);
    printf("elapsed %.1f s\n",
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    printf("%d passed, %d failed\n", h_passed, h_failed);
    return h_failed == 0 ? 0 : 1;
}
