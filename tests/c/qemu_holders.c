/* QEMU holds, libfpl observes and competes.
 *
 * For each QEMU holder (qemu-io raw/qcow2 read-write, read-only, read-only
 * with force-share; a qcow2 with a backing file; qemu-nbd and
 * qemu-storage-daemon NBD exports; a paused qemu-system-x86_64 VM), on
 * every QEMU version found: fpl_query reports exactly the bytes /proc/locks
 * shows and names the process; fpl_check and fpl_acquire of every preset,
 * and of the holder's own perm/shared with FPL_FLAG_EXACT, give the outcome
 * the protocol predicts, with QEMU's message and the holder's pid. */
#include "qemu_harness.h"

#define CR P_CR
#define W P_W
#define WU P_WU
#define RS P_RS
#define ALL 0xfu

/* What PROTOCOL.md §5 says each holder locks, and the perm/shared behind it. */
#define RW_QCOW2 (B(100) | B(101) | B(103) | B(201) | B(203))
#define RO_QCOW2 (B(100) | B(201) | B(203))
#define RW_RAW (B(100) | B(101))
#define RO_ANY B(100)

typedef enum { QEMU_IO, QEMU_NBD, QSD, VM } kind_t;

typedef struct {
    const char *label;
    kind_t kind;
    const char *fmt;       /* image format */
    const char *opts;      /* mode: "rw", "ro", "force" (ro + -U), "share-rw" */
    unsigned bytes;        /* what the image holds */
    unsigned perm, shared; /* the holder's own request, for FPL_FLAG_EXACT */
    const char *comm;      /* its /proc/PID/comm */
    unsigned backing;      /* the qcow2 has a raw backing file holding these bytes */
} holder_case;

static const holder_case cases[] = {
    {"qemu-io raw read-write", QEMU_IO, "raw", "rw", RW_RAW, CR | W, ALL, "qemu-io", 0},
    {"qemu-io raw read-only", QEMU_IO, "raw", "ro", RO_ANY, CR, ALL, "qemu-io", 0},
    {"qemu-io raw -U -r", QEMU_IO, "raw", "force", RO_ANY, CR, ALL, "qemu-io", 0},
    {"qemu-io qcow2 read-write", QEMU_IO, "qcow2", "rw", RW_QCOW2, CR | W | RS, CR | WU, "qemu-io", 0},
    {"qemu-io qcow2 read-only", QEMU_IO, "qcow2", "ro", RO_QCOW2, CR, CR | WU, "qemu-io", 0},
    {"qemu-io qcow2 -U -r", QEMU_IO, "qcow2", "force", RO_ANY, CR, ALL, "qemu-io", 0},
    /* qemu-io's BlockBackend shares everything, so the backing child shares
     * write and resize too (QEMU's bdrv_default_perms_for_cow): byte 100. */
    {"qemu-io qcow2 over a raw backing file", QEMU_IO, "qcow2", "rw", RW_QCOW2, CR | W | RS,
     CR | WU, "qemu-io", RO_ANY},
    {"qemu-nbd qcow2 writable", QEMU_NBD, "qcow2", "rw", RW_QCOW2, CR | W | RS, CR | WU,
     "qemu-nbd", 0},
    {"qemu-nbd -r qcow2", QEMU_NBD, "qcow2", "ro", RO_QCOW2, CR, CR | WU, "qemu-nbd", 0},
    {"qemu-storage-daemon NBD export writable", QSD, "qcow2", "rw", RW_QCOW2, CR | W | RS,
     CR | WU, "qemu-storage-da", 0},
    {"qemu-storage-daemon NBD export read-only", QSD, "qcow2", "ro", RO_QCOW2, CR, CR | WU,
     "qemu-storage-da", 0},
    {"qemu-system-x86_64 VM disk read-write", VM, "qcow2", "rw", RW_QCOW2, CR | W | RS, CR | WU,
     "qemu-system-x86", 0},
    {"qemu-system-x86_64 VM disk read-only=on", VM, "qcow2", "ro", RO_QCOW2, CR, CR | WU,
     "qemu-system-x86", 0},
    /* A guest device does not share write, so neither does the backing
     * child: 100, 201, 203 (PROTOCOL.md §5). */
    {"qemu-system-x86_64 VM disk over a raw backing file", VM, "qcow2", "rw", RW_QCOW2,
     CR | W | RS, CR | WU, "qemu-system-x86", RO_QCOW2},
    {"qemu-system-x86_64 VM raw disk share-rw=on", VM, "raw", "share-rw", RW_RAW, CR | W, ALL,
     "qemu-system-x86", 0},
};

static unsigned perm_bits(unsigned mask) {
    unsigned bits = 0;
    for (unsigned i = 0; i < 4; i++)
        if (mask & B(100 + i)) bits |= 1u << i;
    return bits;
}

static unsigned unshared_bits(unsigned mask) {
    unsigned bits = 0;
    for (unsigned i = 0; i < 4; i++)
        if (mask & B(200 + i)) bits |= 1u << i;
    return bits;
}

static const char *tool_of(kind_t k) {
    switch (k) {
    case QEMU_IO: return "qemu-io";
    case QEMU_NBD: return "qemu-nbd";
    case QSD: return "qemu-storage-daemon";
    default: return "qemu-system-x86_64";
    }
}

static q_proc start_holder(const q_qemu *q, const holder_case *c, const char *img) {
    static char a[16][PATH_MAX];
    char *argv[24];
    int n = 0;
    int ro = strcmp(c->opts, "ro") == 0 || strcmp(c->opts, "force") == 0;
    argv[n++] = (char *)q_tool(q, tool_of(c->kind));
    switch (c->kind) {
    case QEMU_IO:
        argv[n++] = (char *)"-f";
        argv[n++] = (char *)c->fmt;
        if (ro) argv[n++] = (char *)"-r";
        if (strcmp(c->opts, "force") == 0) argv[n++] = (char *)"-U";
        argv[n++] = (char *)img;
        break;
    case QEMU_NBD:
        snprintf(a[0], PATH_MAX, "%s/nbd.sock", h_dir);
        argv[n++] = (char *)"-k";
        argv[n++] = a[0];
        argv[n++] = (char *)"-f";
        argv[n++] = (char *)c->fmt;
        if (ro) argv[n++] = (char *)"-r";
        argv[n++] = (char *)img;
        break;
    case QSD:
        snprintf(a[0], PATH_MAX, "driver=file,node-name=file0,filename=%s%s", img,
                 ro ? ",read-only=on" : "");
        snprintf(a[1], PATH_MAX, "driver=%s,node-name=disk0,file=file0%s", c->fmt,
                 ro ? ",read-only=on" : "");
        snprintf(a[2], PATH_MAX, "addr.type=unix,addr.path=%s/qsd-nbd.sock", h_dir);
        snprintf(a[3], PATH_MAX, "type=nbd,id=exp0,node-name=disk0,writable=%s", ro ? "off" : "on");
        argv[n++] = (char *)"--blockdev";
        argv[n++] = a[0];
        argv[n++] = (char *)"--blockdev";
        argv[n++] = a[1];
        argv[n++] = (char *)"--nbd-server";
        argv[n++] = a[2];
        argv[n++] = (char *)"--export";
        argv[n++] = a[3];
        break;
    case VM:
        argv[n++] = (char *)"-M";
        argv[n++] = (char *)"q35";
        argv[n++] = (char *)"-accel";
        argv[n++] = (char *)"tcg";
        argv[n++] = (char *)"-S";
        argv[n++] = (char *)"-display";
        argv[n++] = (char *)"none";
        argv[n++] = (char *)"-nodefaults";
        if (strcmp(c->opts, "share-rw") == 0) {
            snprintf(a[0], PATH_MAX, "file=%s,if=none,id=d0,format=%s", img, c->fmt);
            argv[n++] = (char *)"-drive";
            argv[n++] = a[0];
            argv[n++] = (char *)"-device";
            argv[n++] = (char *)"virtio-blk-pci,drive=d0,share-rw=on";
        } else {
            snprintf(a[0], PATH_MAX, "file=%s,if=virtio,format=%s%s", img, c->fmt,
                     ro ? ",readonly=on" : "");
            argv[n++] = (char *)"-drive";
            argv[n++] = a[0];
        }
        break;
    }
    argv[n] = NULL;
    return q_start(argv);
}

/* Checks what fpl_query says against /proc/locks and names the holder. */
static void check_query(const char *img, unsigned want, pid_t pid, const char *comm) {
    fpl_status st;
    fpl_holder hs[8];
    fpl_error err;
    unsigned proc = h_proc_locks(h_ino(img), NULL);
    char b1[128], b2[128];
    CHECK(proc == want, "/proc/locks shows %s, protocol says %s", q_bytes(proc, b1, sizeof b1),
          q_bytes(want, b2, sizeof b2));
    int rc = fpl_query(img, FPL_QUERY_HOLDERS, &st, hs, 8, &err);
    CHECK_RC(rc, 0, err);
    CHECK(st.perm == perm_bits(proc) && st.unshared == unshared_bits(proc),
          "fpl_query perm %#x unshared %#x, /proc/locks %s", st.perm, st.unshared,
          q_bytes(proc, b1, sizeof b1));
    CHECK((st.flags & (FPL_STATUS_LEGACY | FPL_STATUS_LIBVIRT)) == 0, "flags %#x", st.flags);
    int named = 0;
    for (uint32_t i = 0; i < st.n_holders && i < 8; i++)
        if (hs[i].pid == pid) {
            named = 1;
            CHECK(strcmp(hs[i].name, comm) == 0, "name '%s' want '%s'", hs[i].name, comm);
            CHECK(hs[i].perm == perm_bits(want) && hs[i].unshared == unshared_bits(want),
                  "holder perm %#x unshared %#x", hs[i].perm, hs[i].unshared);
            CHECK(hs[i].fd >= 0, "fd %d", hs[i].fd);
        }
    CHECK(named && st.n_holders >= 1, "holder pid %d not named (%u holders)", (int)pid,
          st.n_holders);
}

/* fpl_check and fpl_acquire of (perm, shared, flags) against a holder of
 * HELD: the protocol's outcome, QEMU's message, the holder's pid, and no
 * trace left. */
static void compete(const char *img, unsigned held, pid_t pid, const char *what, unsigned perm,
                    unsigned shared, unsigned flags, const char *version) {
    char msg[128];
    unsigned byte = q_predict(held, perm, shared, (flags & FPL_FLAG_EXACT) != 0, msg, sizeof msg);
    fpl_error err;
    int rc = fpl_check(img, perm, shared, flags, &err);
    fpl_lock *lock = NULL;
    fpl_error aerr;
    int arc = fpl_acquire(img, perm, shared, flags, &lock, &aerr);
    if (byte == 0) {
        CHECK_RC(rc, 0, err);
        CHECK_RC(arc, 0, aerr);
    } else {
        CHECK_RC(rc, -EAGAIN, err);
        CHECK_RC(arc, -EAGAIN, aerr);
        CHECK(err.byte == byte && aerr.byte == byte, "byte %u/%u want %u", err.byte, aerr.byte,
              byte);
        CHECK(strncmp(err.message, msg, strlen(msg)) == 0, "'%s' want '%s'", err.message, msg);
        CHECK(strncmp(aerr.message, msg, strlen(msg)) == 0, "'%s' want '%s'", aerr.message, msg);
        CHECK(strstr(aerr.message, "Is another process using the image [") != NULL, "%s",
              aerr.message);
        CHECK(err.holder_pid == pid && aerr.holder_pid == pid, "holder %d/%d want %d",
              err.holder_pid, aerr.holder_pid, (int)pid);
    }
    printf("  QEMU %s: %-9s %s -> %s%s\n", version, what, flags & FPL_FLAG_EXACT ? "(exact)" : "",
           byte ? "refused: " : "admitted", byte ? msg : "");
    if (arc == 0) CHECK(fpl_release(lock) == 0, "release");
    /* /proc/locks can misread while other processes churn locks: let a
     * wrong reading settle before calling it a leak. */
    char b1[128], b2[128];
    CHECK(q_wait_bytes(NULL, img, held), "libfpl left bytes behind: %s, QEMU holds %s",
          q_bytes(h_proc_locks(h_ino(img), NULL), b1, sizeof b1), q_bytes(held, b2, sizeof b2));
}

static void run_case(const q_qemu *q, const holder_case *c) {
    char label[256];
    snprintf(label, sizeof label, "QEMU %s %s", q->version, c->label);
    h_test = label;
    if (!q_has_tool(q, tool_of(c->kind))) {
        /* QEMU 10 comes without qemu-system; its VM cases run on 7.2. */
        printf("%s: no %s in QEMU %s\n", label, tool_of(c->kind), q->version);
        return;
    }
    char name[64];
    snprintf(name, sizeof name, "held-%d.%s", (int)(c - cases), c->fmt);
    const char *base = NULL;
    const char *img;
    if (c->backing) {
        base = q_create(q, "base.raw", "raw", NULL);
        img = q_create(q, name, c->fmt, base);
    } else {
        img = q_create(q, name, c->fmt, NULL);
    }
    q_proc p = start_holder(q, c, img);
    int up = q_wait_bytes(&p, img, c->bytes);
    char log[2048], b[128];
    CHECK(up, "%s never held %s; /proc/locks shows %s; its output: %s", tool_of(c->kind),
          q_bytes(c->bytes, b, sizeof b), q_bytes(h_proc_locks(h_ino(img), NULL), b, sizeof b),
          q_read_log(p.log, log, sizeof log));
    if (up) {
        printf("%s: holds %s (pid %d)\n", label, q_bytes(c->bytes, b, sizeof b), (int)p.pid);
        check_query(img, c->bytes, p.pid, c->comm);
        for (int i = 0; i < 4; i++)
            compete(img, c->bytes, p.pid, q_presets[i].name, q_presets[i].perm,
                    q_presets[i].shared, 0, q->version);
        compete(img, c->bytes, p.pid, "its own", c->perm, c->shared, FPL_FLAG_EXACT, q->version);
        if (base) {
            CHECK(q_wait_bytes(&p, base, c->backing), "backing file holds %s",
                  q_bytes(h_proc_locks(h_ino(base), NULL), b, sizeof b));
            printf("%s: backing file holds %s\n", label, q_bytes(c->backing, b, sizeof b));
            check_query(base, c->backing, p.pid, c->comm);
            for (int i = 0; i < 4; i++)
                compete(base, c->backing, p.pid, q_presets[i].name, q_presets[i].perm,
                        q_presets[i].shared, 0, q->version);
        }
    }
    q_stop(&p);
    CHECK(q_wait_bytes(NULL, img, 0), "bytes left after QEMU stopped");
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    atexit(q_kill_all);
    h_init();
    q_load_versions();
    for (int v = 0; v < q_nversions; v++) {
        char out[256];
        char *args[] = {(char *)q_tool(&q_versions[v], "qemu-img"), (char *)"--version", NULL};
        q_run(args, out, sizeof out, 30);
        char *nl = strchr(out, '\n');
        if (nl) *nl = 0;
        printf("QEMU %s: %s (%s)\n", q_versions[v].version, out, q_versions[v].dir);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&q_versions[v], &cases[i]);
    }
    printf("QEMU versions: ");
    for (int v = 0; v < q_nversions; v++) printf("%s%s", v ? ", " : "", q_versions[v].version);
    printf("\n%d passed, %d failed\n", h_passed, h_failed);
    return h_failed == 0 ? 0 : 1;
}
