/* Mutual exclusion under races: 8 processes contend for one raw image —
 * libfpl writers (strict, and EXACT with a QEMU disk's perm/shared), real
 * QEMU writers (qemu-io opening the image read-write) and libfpl readers
 * that want a stable image. Inside every critical section a checker
 * proves nobody else writes: shared counters for libfpl parties, and data
 * for everybody — each writer writes its own pattern, pauses, and reads it
 * back (QEMU with `read -P`), each reader reads twice and compares.
 *
 * FPL_RACE_ROUNDS (default 1000) rounds per process, or, with
 * FPL_SOAK_SECONDS, as many rounds as fit in that time. QEMU writers are
 * serialised among themselves with flock(2) on a side file (a separate
 * lock space): two raw qemu-io writers share write by QEMU's own rules, so
 * only their races against libfpl are this test's subject.
 *
 * Forks and spawns: every 8th round a libfpl party forks, inside its
 * critical section, a child that releases its copy of the handle (as a
 * child's atexit handler or destructor would) and exits; the parent must
 * stay alone inside. Every 8th round, 4 later, it raw-forks
 * (syscall(SYS_fork), which runs no atfork handler, like posix_spawn and
 * vfork) a child that outlives the release by a moment: the image must
 * still be free for the others at once. */
#include "qemu_harness.h"

#include <stdatomic.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define WORKERS 8
#define REGION 4096

enum role { STRICT_WRITER, EXACT_WRITER, QEMU_WRITER, READER };
static const enum role roles[WORKERS] = {STRICT_WRITER, STRICT_WRITER, EXACT_WRITER, EXACT_WRITER,
                                         QEMU_WRITER,   QEMU_WRITER,   READER,       READER};
static const char *role_names[] = {"libfpl writer (strict)", "libfpl writer (exact)",
                                   "qemu-io writer", "libfpl reader (read)"};

struct shared {
    atomic_int writers_inside, readers_inside;
    atomic_int violations, errors;
    atomic_long rounds[WORKERS], inside[WORKERS], conflicts[WORKERS];
    char detail[512];
};

static struct shared *sh;
static const char *img;
static const char *qemu_io;
static char side[PATH_MAX];
static long max_rounds;
static time_t deadline;

static void violation(const char *fmt, int id, long round) {
    if (atomic_fetch_add(&sh->violations, 1) == 0)
        snprintf(sh->detail, sizeof sh->detail, fmt, id, round);
}

static int more(long round) {
    return deadline ? time(NULL) < deadline : round < max_rounds;
}

static void pause_inside(void) {
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
}

static void libfpl_worker(int id, enum role role) {
    int data = open(img, O_RDWR | O_CLOEXEC);
    if (data < 0) h_die("open image");
    unsigned char mine[REGION], seen[REGION], again[REGION];
    for (long r = 0; more(r); r++) {
        atomic_fetch_add(&sh->rounds[id], 1);
        fpl_lock *lock = NULL;
        fpl_error err;
        int rc;
        if (getenv("FPL_RACE_NO_LOCKS"))
            rc = 0; /* the checker's own test: nobody locks */
        else if (role == STRICT_WRITER)
            rc = fpl_acquire(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
        else if (role == EXACT_WRITER)
            rc = fpl_acquire(img, P_CR | P_W | P_RS, P_CR | P_WU, FPL_FLAG_EXACT, &lock, &err);
        else
            rc = fpl_acquire(img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
        if (rc == -EAGAIN) {
            atomic_fetch_add(&sh->conflicts[id], 1);
            continue;
        }
        if (rc != 0) {
            atomic_fetch_add(&sh->errors, 1);
            continue;
        }
        atomic_fetch_add(&sh->inside[id], 1);
        if (lock && r % 8 == 0) {
            pid_t child = fork();
            if (child == 0) _exit(fpl_release(lock) == 0 ? 0 : 1);
            int status = 0;
            if (child < 0 || waitpid(child, &status, 0) != child || status != 0)
                atomic_fetch_add(&sh->errors, 1);
        }
        pid_t lingering = -1;
        if (lock && r % 8 == 4) {
            lingering = (pid_t)syscall(SYS_fork);
            if (lingering == 0) {
                struct timespec ts = {0, 2000000};
                nanosleep(&ts, NULL);
                _exit(0);
            }
        }
        if (role == READER) {
            atomic_fetch_add(&sh->readers_inside, 1);
            if (atomic_load(&sh->writers_inside)) violation("reader %d round %ld met a writer", id, r);
            if (pread(data, seen, REGION, 0) != REGION) atomic_fetch_add(&sh->errors, 1);
            pause_inside();
            if (pread(data, again, REGION, 0) != REGION) atomic_fetch_add(&sh->errors, 1);
            if (memcmp(seen, again, REGION) != 0)
                violation("reader %d round %ld saw the image change", id, r);
            atomic_fetch_sub(&sh->readers_inside, 1);
        } else {
            if (atomic_fetch_add(&sh->writers_inside, 1) != 0 || atomic_load(&sh->readers_inside))
                violation("writer %d round %ld was not alone", id, r);
            memset(mine, (int)((id * 37 + r) % 251 + 1), REGION);
            if (pwrite(data, mine, REGION, 0) != REGION) atomic_fetch_add(&sh->errors, 1);
            pause_inside();
            if (pread(data, seen, REGION, 0) != REGION) atomic_fetch_add(&sh->errors, 1);
            if (memcmp(mine, seen, REGION) != 0)
                violation("writer %d round %ld found another writer's data", id, r);
            atomic_fetch_sub(&sh->writers_inside, 1);
        }
        if (lock && fpl_release(lock) != 0) atomic_fetch_add(&sh->errors, 1);
        if (lingering > 0) waitpid(lingering, NULL, 0);
    }
    close(data);
}

static void qemu_worker(int id) {
    int sidefd = open(side, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (sidefd < 0) h_die("open side file");
    char out[8192];
    for (long r = 0; more(r); r++) {
        atomic_fetch_add(&sh->rounds[id], 1);
        char write_cmd[64], read_cmd[64];
        int pattern = (int)((id * 37 + r) % 251 + 1);
        snprintf(write_cmd, sizeof write_cmd, "write -P %d 0 %d", pattern, REGION);
        snprintf(read_cmd, sizeof read_cmd, "read -P %d 0 %d", pattern, REGION);
        char *argv[] = {(char *)qemu_io, (char *)"-f", (char *)"raw", (char *)"-c", write_cmd,
                        (char *)"-c", (char *)"sleep 1", (char *)"-c", read_cmd, (char *)img,
                        NULL};
        flock(sidefd, LOCK_EX);
        int rc = q_run(argv, out, sizeof out, 30);
        flock(sidefd, LOCK_UN);
        if (strstr(out, "Pattern verification failed")) {
            violation("qemu-io writer %d round %ld found another writer's data", id, r);
        } else if (strstr(out, "Failed to get") && strstr(out, "Is another process using the image")) {
            atomic_fetch_add(&sh->conflicts[id], 1);
        } else if (rc == 0) {
            atomic_fetch_add(&sh->inside[id], 1);
        } else {
            atomic_fetch_add(&sh->errors, 1);
            fprintf(stderr, "qemu-io: rc %d: %s\n", rc, out);
        }
    }
    close(sidefd);
}

int main(void) {
    h_init();
    q_load_versions();
    qemu_io = q_tool(&q_versions[0], "qemu-io");
    const char *rounds = getenv("FPL_RACE_ROUNDS");
    const char *soak = getenv("FPL_SOAK_SECONDS");
    max_rounds = rounds ? atol(rounds) : 1000;
    deadline = soak ? time(NULL) + atol(soak) : 0;
    img = h_image("race.img");
    snprintf(side, sizeof side, "%.1000s/qemu-writers.flock", h_dir);
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) h_die("mmap");
    memset(sh, 0, sizeof *sh);

    time_t start = time(NULL);
    pid_t pids[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        pids[i] = fork();
        if (pids[i] < 0) h_die("fork");
        if (pids[i] == 0) {
            if (roles[i] == QEMU_WRITER) qemu_worker(i);
            else libfpl_worker(i, roles[i]);
            _exit(0);
        }
    }
    int crashed = 0;
    for (int i = 0; i < WORKERS; i++) {
        int status = 0;
        waitpid(pids[i], &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) crashed++;
    }
    long seconds = (long)(time(NULL) - start);

    h_test = "race";
    long total = 0, inside = 0;
    for (int i = 0; i < WORKERS; i++) {
        printf("worker %d %-24s rounds %6ld inside %6ld refused %6ld\n", i, role_names[roles[i]],
               atomic_load(&sh->rounds[i]), atomic_load(&sh->inside[i]),
               atomic_load(&sh->conflicts[i]));
        total += atomic_load(&sh->rounds[i]);
        inside += atomic_load(&sh->inside[i]);
        CHECK(deadline || atomic_load(&sh->rounds[i]) == max_rounds, "worker %d ran %ld rounds", i,
              atomic_load(&sh->rounds[i]));
        CHECK(atomic_load(&sh->inside[i]) > 0, "worker %d never got in", i);
    }
    printf("%d processes, %ld rounds, %ld critical sections, %d violations, %d errors, %ld s\n",
           WORKERS, total, inside, atomic_load(&sh->violations), atomic_load(&sh->errors), seconds);
    CHECK(atomic_load(&sh->violations) == 0, "%s", sh->detail);
    CHECK(atomic_load(&sh->errors) == 0, "%d errors", atomic_load(&sh->errors));
    CHECK(crashed == 0, "%d workers crashed", crashed);
    CHECK(h_proc_locks(h_ino(img), NULL) == 0, "locks left: %#x", h_proc_locks(h_ino(img), NULL));
    printf("%d passed, %d failed\n", h_passed, h_failed);
    return h_failed == 0 ? 0 : 1;
}
