/* What libfpl must never do to its caller, whatever the caller's process
 * does around it (issue: soundness):
 *  1. a forked child never releases (or changes) its parent's locks;
 *  2. fpl_release returning 0 means the handle's bytes are free, even while
 *     a child made by fork, a raw fork or clone syscall, vfork or
 *     posix_spawn still holds a copy of the descriptor, and a child forked
 *     during a release is never left unable to use libfpl;
 *  3. libfpl never drops the caller's own locks: its POSIX lease on byte 0
 *     (libvirt's virtlockd) and the OFD locks its description held before
 *     fpl_acquire_fd;
 *  4. looking at a path never has side effects: a FIFO, a pty master, a
 *     character device or a socket is refused without being opened for
 *     reading.
 * The judges are independent of libfpl: /proc/locks, F_OFD_GETLK and F_GETLK
 * from other open file descriptions or other processes, qemu-io, strace.
 * Run by tests/soundness.rs. */
#include "harness.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>

extern char **environ;

#define WRITE_BYTES (B(100) | B(101) | B(103) | B(201) | B(202) | B(203))
#define LIVENESS_MS 20000

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static fpl_lock *acquire_write(const char *img) {
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    return rc == 0 ? lock : NULL;
}

/* Starts the case NAME: its image NAME.img, held with the write preset
 * (NULL, counted as a failure, if that fails). */
static fpl_lock *begin_case(const char *name, const char **img) {
    h_test = name;
    char file[64];
    snprintf(file, sizeof file, "%s.img", name);
    *img = h_image(file);
    return acquire_write(*img);
}

/* Runs `qemu-io -f raw -c 'write 0 4k' IMG`: 1 if QEMU refused to open the
 * image for writing because of a lock, 0 if it wrote, -1 otherwise. */
static int qemu_write_refused(const char *img) {
    char log[PATH_MAX];
    snprintf(log, sizeof log, "%s/qemu-io.log", h_dir);
    pid_t pid = fork();
    if (pid < 0) h_die("fork");
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        execlp("qemu-io", "qemu-io", "-f", "raw", "-c", "write 0 4k", img, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    char text[4096] = {0};
    int fd = open(log, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, text, sizeof text - 1);
        text[n > 0 ? n : 0] = 0;
        close(fd);
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
        fprintf(stderr, "MISSING qemu-io on PATH: install QEMU 10's qemu-utils\n");
        return -1;
    }
    if (strstr(text, "Failed to get") && strstr(text, "Is another process using the image"))
        return 1;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && strstr(text, "wrote 4096/4096"))
        return 0;
    fprintf(stderr, "qemu-io: status %#x: %s\n", status, text);
    return -1;
}

/* Who holds BYTE of PATH, asked from a new open file description with
 * F_OFD_GETLK F_WRLCK: F_UNLCK if nobody, else the type found. */
static int ofd_probe(const char *path, off_t byte) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) h_die("open for probe");
    struct flock fl = {0};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    if (fcntl(fd, F_OFD_GETLK, &fl) != 0) h_die("F_OFD_GETLK");
    close(fd);
    return fl.l_type;
}

/* The bytes of interest anybody holds, probed one by one (see B()). */
static unsigned probe_mask(const char *path) {
    static const int bytes[] = {100, 101, 102, 103, 104, 200, 201, 202, 203, 204};
    unsigned mask = 0;
    for (size_t i = 0; i < sizeof bytes / sizeof bytes[0]; i++)
        if (ofd_probe(path, bytes[i]) != F_UNLCK) mask |= B(bytes[i]);
    return mask;
}

static int alive(pid_t pid) {
    return waitpid(pid, NULL, WNOHANG) == 0;
}

/* ---- 1. a forked child never releases its parent's locks -------------- */

static fpl_lock *atexit_lock;

static void release_at_exit(void) {
    fpl_release(atexit_lock);
}

enum child_does { CHILD_RELEASE, CHILD_EXIT_ATEXIT, CHILD_UPDATE };

static void fork_child_leaves_parent_alone(enum child_does what, const char *name) {
    const char *img;
    fpl_lock *lock = begin_case(name, &img);
    if (!lock) return;
    int rep[2];
    if (pipe2(rep, O_CLOEXEC) != 0) h_die("pipe");
    pid_t pid = fork();
    if (pid < 0) h_die("fork");
    if (pid == 0) {
        close(rep[0]);
        if (what == CHILD_RELEASE) {
            dprintf(rep[1], "release %d\n", fpl_release(lock));
            _exit(0);
        }
        if (what == CHILD_EXIT_ATEXIT) {
            atexit_lock = lock;
            atexit(release_at_exit);
            exit(0);
        }
        fpl_error err;
        memset(&err, 0, sizeof err);
        int rc = fpl_update(lock, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &err);
        int rc2 = fpl_update(lock, FPL_MODE_EXCLUSIVE_PERM, FPL_MODE_EXCLUSIVE_SHARE, 0, &err);
        dprintf(rep[1], "update %d %d %s\nrelease %d\n", rc, rc2, err.message, fpl_release(lock));
        _exit(0);
    }
    close(rep[1]);
    char text[1024] = {0};
    size_t len = 0;
    ssize_t n;
    while ((n = read(rep[0], text + len, sizeof text - 1 - len)) > 0) len += (size_t)n;
    close(rep[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    if (what != CHILD_EXIT_ATEXIT)
        CHECK(strstr(text, "release 0\n") != NULL, "the child's fpl_release: %s", text);
    if (what == CHILD_UPDATE) {
        char want[32];
        snprintf(want, sizeof want, "update %d %d ", -EPERM, -EPERM);
        CHECK(strstr(text, want) != NULL, "the child's fpl_update must be -EPERM: %s", text);
        CHECK(strstr(text, "another process") != NULL,
              "the message must say the handle belongs to another process: %s", text);
    }
    unsigned held = probe_mask(img);
    CHECK(held == WRITE_BYTES, "the parent's bytes after the child: %#x (want %#x)", held,
          WRITE_BYTES);
    CHECK(qemu_write_refused(img) == 1, "qemu-io could write while the parent holds the image");
    CHECK(fpl_release(lock) == 0, "the parent's release");
    CHECK(h_proc_locks(h_ino(img), NULL) == 0, "left after the parent's release: %#x",
          h_proc_locks(h_ino(img), NULL));
    CHECK(qemu_write_refused(img) == 0, "qemu-io refused after the parent's release");
}

/* ---- 2. release always releases -------------------------------------- */

/* The first child of thread TID (from /proc), waiting up to the liveness
 * limit; -1 if none appeared. */
static pid_t child_of_thread(pid_t tid) {
    char path[96];
    snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)tid);
    for (int i = 0; i < LIVENESS_MS / 5; i++) {
        FILE *f = fopen(path, "re");
        int pid = -1;
        if (f) {
            if (fscanf(f, "%d", &pid) != 1) pid = -1;
            fclose(f);
        }
        if (pid > 0) return pid;
        sleep_ms(5);
    }
    return -1;
}

/* Whether process PID has a descriptor of inode INO (a copy of ours). */
static int has_fd_of(pid_t pid, ino_t ino) {
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dir);
    if (!d) return 0;
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char p[PATH_MAX];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (e->d_name[0] != '.' && stat(p, &st) == 0 && st.st_ino == ino) found = 1;
    }
    closedir(d);
    return found;
}

/* The common part: the lock is held, child PID holds a copy of its
 * descriptor and stays alive; release here, the bytes must be free. */
static void release_while_child_holds(fpl_lock *lock, const char *img, pid_t pid) {
    CHECK(has_fd_of(pid, h_ino(img)), "the child has no copy of the descriptor");
    unsigned before = probe_mask(img);
    CHECK(before == WRITE_BYTES, "held before release: %#x", before);
    CHECK(fpl_release(lock) == 0, "release");
    unsigned left = probe_mask(img);
    CHECK(left == 0, "fpl_release returned 0 but bytes %#x are still held (child %d alive: %d)",
          left, (int)pid, has_fd_of(pid, h_ino(img)));
    left = h_proc_locks(h_ino(img), NULL);
    CHECK(left == 0, "/proc/locks still lists bytes %#x", left);
}

static int clone_child(void *arg) {
    int fd = *(int *)arg;
    char c;
    return read(fd, &c, 1) == 1 ? 0 : 1;
}

enum spawn_kind { SPAWN_FORK, SPAWN_SYS_FORK, SPAWN_CLONE };

static void release_while_forked_child_lives(enum spawn_kind kind, const char *name) {
    const char *img;
    fpl_lock *lock = begin_case(name, &img);
    if (!lock) return;
    int go[2];
    if (pipe2(go, O_CLOEXEC) != 0) h_die("pipe");
    static char stack[256 * 1024] __attribute__((aligned(64)));
    pid_t pid;
    if (kind == SPAWN_CLONE) {
        /* clone(2) without CLONE_VM: a fork that runs no atfork handler. */
        pid = clone(clone_child, stack + sizeof stack, SIGCHLD, &go[0]);
    } else if (kind == SPAWN_SYS_FORK) {
#ifdef SYS_fork
        pid = (pid_t)syscall(SYS_fork);
#else
        pid = (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
#endif
    } else {
        pid = fork();
    }
    if (pid < 0) h_die("fork");
    if (pid == 0) {
        /* Only system calls here: a raw fork leaves libc's state unfixed. */
        char c;
        _exit(read(go[0], &c, 1) == 1 ? 0 : 1);
    }
    release_while_child_holds(lock, img, pid);
    CHECK(alive(pid), "the child ended early");
    if (write(go[1], "x", 1) != 1) h_die("write");
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    close(go[0]);
    close(go[1]);
}

/* vfork and posix_spawn: the calling thread is suspended until the child
 * execs or exits; the child blocks opening a FIFO for writing, holding a
 * copy of every descriptor, until the test opens the FIFO for reading. */
struct spawner {
    const char *fifo;
    int use_posix_spawn;
    _Atomic pid_t tid;
    pid_t pid;
    int rc;
};

static void *spawner_thread(void *arg) {
    struct spawner *s = arg;
    atomic_store(&s->tid, (pid_t)syscall(SYS_gettid));
    if (s->use_posix_spawn) {
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 20, s->fifo, O_WRONLY, 0);
        char *argv[] = {(char *)"true", NULL};
        s->rc = posix_spawnp(&s->pid, "true", &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        return NULL;
    }
    pid_t pid = vfork();
    if (pid == 0) {
        int fd = open(s->fifo, O_WRONLY);
        _exit(fd >= 0 ? 0 : 1);
    }
    s->pid = pid;
    s->rc = pid > 0 ? 0 : errno;
    return NULL;
}

static void release_while_suspended_spawn(int use_posix_spawn, const char *name) {
    h_test = name;
    char file[64], fifo[PATH_MAX];
    snprintf(file, sizeof file, "%s.img", name);
    snprintf(fifo, sizeof fifo, "%s/%s.fifo", h_dir, name);
    if (mkfifo(fifo, 0600) != 0) h_die("mkfifo");
    const char *img = h_image(file);
    fpl_lock *lock = acquire_write(img);
    if (!lock) return;
    struct spawner s = {.fifo = fifo, .use_posix_spawn = use_posix_spawn};
    atomic_store(&s.tid, 0);
    pthread_t t;
    pthread_create(&t, NULL, spawner_thread, &s);
    pid_t tid;
    while ((tid = atomic_load(&s.tid)) == 0) sched_yield();
    pid_t pid = child_of_thread(tid);
    CHECK(pid > 0, "no child of the spawning thread appeared");
    if (pid > 0) {
        /* Blocked in open(FIFO) before exec, with copies of every descriptor. */
        for (int i = 0; i < LIVENESS_MS / 5 && !has_fd_of(pid, h_ino(img)); i++) sleep_ms(5);
        release_while_child_holds(lock, img, pid);
        CHECK(kill(pid, 0) == 0, "the child ended early");
    } else {
        fpl_release(lock);
    }
    int rd = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    pthread_join(t, NULL);
    CHECK(s.rc == 0, "spawn failed: %d", s.rc);
    int status = 0;
    if (s.rc == 0) waitpid(s.pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    close(rd);
}

/* A fork in another thread while this one releases, again and again: each
 * child must be able to acquire and release on its own, never hang. */
#define FORK_ROUNDS 1000
#define RELEASERS 2
static char race_img[RELEASERS][PATH_MAX], child_img[PATH_MAX];
static atomic_int race_stop, race_conflicts, race_failures;

/* Acquires and releases the parent's image without a pause. Each release
 * returned 0, so the next acquire must never find the bytes still held
 * (by a child that was forked meanwhile and has a copy). */
static void *releaser(void *arg) {
    const char *img = race_img[(intptr_t)arg];
    while (!atomic_load(&race_stop)) {
        fpl_lock *lock = NULL;
        fpl_error err;
        int rc = fpl_acquire(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
        if (rc == -EAGAIN) {
            if (atomic_fetch_add(&race_conflicts, 1) == 0)
                fprintf(stderr, "fork_during_release: %s\n", err.message);
        } else if (rc != 0 || fpl_release(lock) != 0) {
            atomic_fetch_add(&race_failures, 1);
        }
    }
    return NULL;
}

static void fork_during_release(void) {
    h_test = "fork_during_release";
    for (int i = 0; i < RELEASERS; i++) {
        char name[32];
        snprintf(name, sizeof name, "race-parent-%d.img", i);
        snprintf(race_img[i], PATH_MAX, "%s", h_image(name));
    }
    snprintf(child_img, sizeof child_img, "%s", h_image("race-child.img"));
    pthread_t t[RELEASERS];
    for (int i = 0; i < RELEASERS; i++) pthread_create(&t[i], NULL, releaser, (void *)(intptr_t)i);
    int rounds = 0, hung = 0, bad = 0;
    for (; rounds < FORK_ROUNDS && !hung && !bad; rounds++) {
        pid_t pid = fork();
        if (pid < 0) h_die("fork");
        if (pid == 0) {
            alarm(10); /* the watchdog: a hung child dies of SIGALRM */
            fpl_lock *lock = NULL;
            fpl_error err;
            int rc = fpl_acquire(child_img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock,
                                 &err);
            int rc2 = rc == 0 ? fpl_release(lock) : rc;
            _exit(rc == 0 && rc2 == 0 ? 0 : 3);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) hung = 1;
        else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) bad = status;
    }
    atomic_store(&race_stop, 1);
    for (int i = 0; i < RELEASERS; i++) pthread_join(t[i], NULL);
    CHECK(!hung, "round %d: a child forked during a release hung in libfpl (killed by its "
                 "10 s watchdog)", rounds);
    CHECK(!bad, "round %d: child status %#x", rounds, bad);
    CHECK(atomic_load(&race_conflicts) == 0,
          "%d acquires in the parent refused: a release returned 0 while a child forked "
          "meanwhile kept the bytes", atomic_load(&race_conflicts));
    CHECK(atomic_load(&race_failures) == 0, "%d acquire/release failures in the parent",
          atomic_load(&race_failures));
    unsigned left = h_proc_locks(h_ino(child_img), NULL);
    for (int i = 0; i < RELEASERS; i++) left |= h_proc_locks(h_ino(race_img[i]), NULL);
    CHECK(left == 0, "bytes left behind: %#x", left);
    printf("fork_during_release: %d rounds\n", rounds);
}

/* Racing writers, each of which forks a child that releases its copy of
 * the handle while the writer is inside: nobody else may ever get in. */
#define RACERS 4
#define RACE_ROUNDS 300

struct race_shared {
    atomic_int inside, violations, entered, errors;
};

static void fork_release_race(void) {
    h_test = "fork_release_race";
    const char *img = h_image("fork-race.img");
    struct race_shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) h_die("mmap");
    memset(sh, 0, sizeof *sh);
    pid_t pids[RACERS];
    for (int i = 0; i < RACERS; i++) {
        pids[i] = fork();
        if (pids[i] < 0) h_die("fork");
        if (pids[i] > 0) continue;
        for (int r = 0; r < RACE_ROUNDS; r++) {
            fpl_lock *lock = NULL;
            fpl_error err;
            int rc = fpl_acquire(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
            if (rc == -EAGAIN) continue;
            if (rc != 0) {
                atomic_fetch_add(&sh->errors, 1);
                continue;
            }
            atomic_fetch_add(&sh->entered, 1);
            if (atomic_fetch_add(&sh->inside, 1) != 0) atomic_fetch_add(&sh->violations, 1);
            pid_t child = fork();
            if (child == 0) _exit(fpl_release(lock) == 0 ? 0 : 1);
            int status = 0;
            waitpid(child, &status, 0);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) atomic_fetch_add(&sh->errors, 1);
            sleep_ms(1); /* still inside, with the child's release done */
            if (atomic_load(&sh->inside) != 1) atomic_fetch_add(&sh->violations, 1);
            atomic_fetch_sub(&sh->inside, 1);
            if (fpl_release(lock) != 0) atomic_fetch_add(&sh->errors, 1);
        }
        _exit(0);
    }
    for (int i = 0; i < RACERS; i++) waitpid(pids[i], NULL, 0);
    CHECK(atomic_load(&sh->violations) == 0,
          "%d times a writer met another inside (of %d critical sections)",
          atomic_load(&sh->violations), atomic_load(&sh->entered));
    CHECK(atomic_load(&sh->entered) > 0, "nobody ever got in");
    CHECK(atomic_load(&sh->errors) == 0, "%d errors", atomic_load(&sh->errors));
    CHECK(probe_mask(img) == 0, "bytes left: %#x", probe_mask(img));
    printf("fork_release_race: %d critical sections\n", atomic_load(&sh->entered));
    munmap(sh, sizeof *sh);
}

/* ---- 3. libfpl never drops the caller's own locks --------------------- */

/* Whether this process holds a POSIX write lock on byte 0 of PATH, asked by
 * a forked checker (POSIX locks are not inherited) with F_GETLK. */
static int lease_held(const char *path) {
    pid_t me = getpid();
    pid_t pid = fork();
    if (pid < 0) h_die("fork");
    if (pid == 0) {
        int fd = open(path, O_RDWR | O_CLOEXEC);
        struct flock fl = {0};
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = 0;
        fl.l_len = 1;
        if (fd < 0 || fcntl(fd, F_GETLK, &fl) != 0) _exit(2);
        _exit(fl.l_type == F_WRLCK && fl.l_pid == me ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int take_lease(int fd) {
    struct flock fl = {0};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 1;
    return fcntl(fd, F_SETLK, &fl);
}

/* After STEP, the lease must still be there; taken again if it is not, so
 * that each step is judged on its own. */
static void lease_after(const char *img, int lease_fd, const char *step) {
    int held = lease_held(img);
    CHECK(held, "the caller's POSIX lease on byte 0 was dropped by %s", step);
    if (!held && take_lease(lease_fd) != 0) h_die("retake the lease");
}

static void posix_lease_survives(void) {
    h_test = "posix_lease_survives";
    const char *img = h_image("lease.img");
    int lease_fd = open(img, O_RDWR | O_CLOEXEC);
    if (lease_fd < 0 || take_lease(lease_fd) != 0) h_die("lease");
    CHECK(lease_held(img), "the checker does not see the lease at all");
    fpl_error err;
    fpl_status st;
    fpl_holder hs[8];

    int rc = fpl_query(img, 0, &st, NULL, 0, &err);
    CHECK_RC(rc, 0, err);
    CHECK(st.flags & FPL_STATUS_LIBVIRT, "the lease is not reported: flags %#x", st.flags);
    lease_after(img, lease_fd, "fpl_query");

    rc = fpl_query(img, FPL_QUERY_HOLDERS, &st, hs, 8, &err);
    CHECK_RC(rc, 0, err);
    lease_after(img, lease_fd, "fpl_query(FPL_QUERY_HOLDERS)");

    rc = fpl_check(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &err);
    CHECK_RC(rc, 0, err);
    lease_after(img, lease_fd, "fpl_check");

    fpl_lock *lock = acquire_write(img);
    lease_after(img, lease_fd, "fpl_acquire");
    if (lock) CHECK(fpl_release(lock) == 0, "release");
    lease_after(img, lease_fd, "fpl_release");

    h_helper holder;
    CHECK(h_hold(&holder, img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0) == 0, "%s",
          holder.reply);
    lock = NULL;
    rc = fpl_acquire(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EAGAIN, err);
    if (rc == 0) fpl_release(lock);
    lease_after(img, lease_fd, "fpl_acquire failing with a conflict");
    rc = fpl_check(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &err);
    CHECK_RC(rc, -EAGAIN, err);
    lease_after(img, lease_fd, "fpl_check finding a conflict");
    CHECK(h_finish(&holder) == 0, "helper");

    int fd = open(img, O_RDONLY | O_CLOEXEC);
    lock = NULL;
    rc = fpl_acquire_fd(fd, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    lease_after(img, lease_fd, "fpl_acquire_fd");
    if (rc == 0) CHECK(fpl_release(lock) == 0, "release");
    lease_after(img, lease_fd, "fpl_release of an fpl_acquire_fd handle");
    CHECK(probe_mask(img) == 0, "bytes left: %#x", probe_mask(img));
    close(fd); /* the caller's own close: this one drops the lease */
    close(lease_fd);
}

static int ofd_rdlock(int fd, off_t byte) {
    struct flock fl = {0};
    fl.l_type = F_RDLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    return fcntl(fd, F_OFD_SETLK, &fl);
}

static void acquire_fd_keeps_description_locks(void) {
    h_test = "acquire_fd_keeps_description_locks";
    const char *img = h_image("foreign.img");
    int fd = open(img, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ofd_rdlock(fd, 104) != 0 || ofd_rdlock(fd, 150) != 0) h_die("own OFD locks");
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire_fd(fd, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    unsigned held = probe_mask(img);
    CHECK(held == (WRITE_BYTES | B(104)), "while held: %#x", held);
    if (rc == 0) CHECK(fpl_release(lock) == 0, "release");
    CHECK(h_fd_locks(fd) == B(104), "the description's own 104 after release: fdinfo %#x",
          h_fd_locks(fd));
    CHECK(ofd_probe(img, 104) == F_RDLCK, "104 erased by fpl_release");
    CHECK(ofd_probe(img, 150) == F_RDLCK, "150 erased by fpl_release");
    CHECK(ofd_probe(img, 101) == F_UNLCK, "101 left after release");

    /* A conflict: the rollback must not erase them either. */
    h_helper holder;
    CHECK(h_hold(&holder, img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0) == 0, "%s",
          holder.reply);
    lock = NULL;
    rc = fpl_acquire_fd(fd, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EAGAIN, err);
    if (rc == 0) fpl_release(lock);
    CHECK(h_fd_locks(fd) == B(104), "the description's own locks after the rollback: %#x",
          h_fd_locks(fd));
    CHECK(ofd_probe(img, 104) == F_RDLCK, "104 erased by the rollback");
    CHECK(ofd_probe(img, 150) == F_RDLCK, "150 erased by the rollback");
    CHECK(h_finish(&holder) == 0, "helper");
    close(fd);
}

/* ---- 4. looking never has side effects -------------------------------- */

/* A writer blocked in open(FIFO, O_WRONLY) stays blocked: libfpl refuses
 * the FIFO without opening it for reading. WHICH: 0 acquire, 1 check, 2
 * query. */
static void fifo_writer_stays_blocked(int which) {
    static const char *names[] = {"fifo_acquire", "fifo_check", "fifo_query"};
    h_test = names[which];
    char fifo[PATH_MAX];
    snprintf(fifo, sizeof fifo, "%s/%s", h_dir, names[which]);
    if (mkfifo(fifo, 0600) != 0) h_die("mkfifo");
    int opened[2];
    if (pipe2(opened, O_CLOEXEC) != 0) h_die("pipe");
    pid_t pid = fork();
    if (pid < 0) h_die("fork");
    if (pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        int fd = open(fifo, O_WRONLY);
        if (write(opened[1], "o", 1) != 1) _exit(3);
        _exit(fd >= 0 && write(fd, "data", 4) == 4 ? 0 : 4);
    }
    close(opened[1]);
    /* Wait until the writer sleeps in the open itself. */
    int blocked = 0;
    char path[64], wchan[128];
    snprintf(path, sizeof path, "/proc/%d/wchan", (int)pid);
    for (int i = 0; i < LIVENESS_MS / 5 && !blocked; i++) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, wchan, sizeof wchan - 1) : -1;
        wchan[n > 0 ? n : 0] = 0;
        if (fd >= 0) close(fd);
        blocked = strstr(wchan, "fifo") != NULL || strstr(wchan, "pipe") != NULL ||
                  strstr(wchan, "wait_for_partner") != NULL;
        if (!blocked) sleep_ms(5);
    }
    CHECK(blocked, "the writer never blocked in open (wchan '%s')", wchan);
    fpl_error err;
    int rc;
    if (which == 0) {
        fpl_lock *lock = NULL;
        rc = fpl_acquire(fifo, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &lock,
                         &err);
        if (rc == 0) fpl_release(lock);
    } else if (which == 1) {
        rc = fpl_check(fifo, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &err);
    } else {
        fpl_status st;
        rc = fpl_query(fifo, 0, &st, NULL, 0, &err);
    }
    CHECK_RC(rc, -EINVAL, err);
    /* A settle for the writer to run if it was let go: on a libfpl that
     * never opens the FIFO this can only pass. */
    struct pollfd p = {.fd = opened[0], .events = POLLIN};
    int ready = poll(&p, 1, 300);
    CHECK(ready == 0, "the writer's open(FIFO, O_WRONLY) returned: libfpl opened the FIFO "
                      "for reading");
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
          "the writer went on (status %#x: 4 or SIGPIPE = its write found no reader)", status);
    close(opened[0]);
}

/* fpl_acquire, fpl_check and fpl_query on PATH all give WANT. */
static void refused_all(const char *path, int want, const char *what) {
    fpl_lock *lock = NULL;
    fpl_error err;
    fpl_status st;
    int rc = fpl_acquire(path, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &lock,
                         &err);
    CHECK(rc == want, "fpl_acquire(%s) = %d, want %d: %s", what, rc, want, err.message);
    if (rc == 0) fpl_release(lock);
    rc = fpl_check(path, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &err);
    CHECK(rc == want, "fpl_check(%s) = %d, want %d: %s", what, rc, want, err.message);
    rc = fpl_query(path, 0, &st, NULL, 0, &err);
    CHECK(rc == want, "fpl_query(%s) = %d, want %d: %s", what, rc, want, err.message);
}

static void non_images_refused(void) {
    h_test = "non_images_refused";
    int fds_before = h_count_fds();
    char sock[108];
    snprintf(sock, sizeof sock, "%.90s/sock", h_dir);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
    if (bind(s, (struct sockaddr *)&sa, sizeof sa) != 0) h_die("bind");
    refused_all(sock, -EINVAL, "a unix socket");
    close(s);
    refused_all("/dev/null", -EINVAL, "/dev/null");
    refused_all("/dev/ptmx", -EINVAL, "/dev/ptmx");
    refused_all(h_dir, -EISDIR, "a directory");
    CHECK(h_count_fds() == fds_before, "descriptors %d -> %d", fds_before, h_count_fds());
}

/* The helper role traced by strace. */
static int role_ptmx(void) {
    fpl_error err;
    fpl_status st;
    int c = fpl_check("/dev/ptmx", FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &err);
    int q = fpl_query("/dev/ptmx", FPL_QUERY_HOLDERS, &st, NULL, 0, &err);
    printf("check %d query %d\n", c, q);
    return 0;
}

static void ptmx_never_opened(void) {
    h_test = "ptmx_never_opened";
    char trace[PATH_MAX], out[PATH_MAX];
    snprintf(trace, sizeof trace, "%s/ptmx.strace", h_dir);
    snprintf(out, sizeof out, "%s/ptmx.out", h_dir);
    pid_t pid = fork();
    if (pid < 0) h_die("fork");
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) _exit(126);
        dup2(fd, 1);
        execlp("strace", "strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", trace,
               h_self, "ptmx", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "strace ran (status %#x; 127 = strace missing: apt-get install strace)", status);
    char text[256] = {0};
    int fd = open(out, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, text, sizeof text - 1);
        text[n > 0 ? n : 0] = 0;
        close(fd);
    }
    char want[64];
    snprintf(want, sizeof want, "check %d query %d\n", -EINVAL, -EINVAL);
    CHECK(strcmp(text, want) == 0, "the traced calls gave: %s", text);
    FILE *f = fopen(trace, "re");
    CHECK(f != NULL, "no strace output");
    int mentions = 0, opened = 0;
    char line[1024];
    while (f && fgets(line, sizeof line, f)) {
        if (!strstr(line, "\"/dev/ptmx\"")) continue;
        mentions++;
        if (!strstr(line, "O_PATH")) {
            opened++;
            fprintf(stderr, "ptmx_never_opened: %s", line);
        }
    }
    if (f) fclose(f);
    CHECK(mentions > 0, "strace saw no open of /dev/ptmx at all");
    CHECK(opened == 0, "/dev/ptmx was opened %d time(s) without O_PATH (a pty allocated)",
          opened);
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "ptmx") == 0) return role_ptmx();
    if (argc > 1) return h_helper_main(argc, argv);
    h_init();
    fork_child_leaves_parent_alone(CHILD_RELEASE, "child_release");
    fork_child_leaves_parent_alone(CHILD_EXIT_ATEXIT, "child_atexit_release");
    fork_child_leaves_parent_alone(CHILD_UPDATE, "child_update");
    release_while_forked_child_lives(SPAWN_SYS_FORK, "release_with_sys_fork_child");
    release_while_forked_child_lives(SPAWN_CLONE, "release_with_clone_child");
    release_while_suspended_spawn(0, "release_with_vfork_child");
    release_while_suspended_spawn(1, "release_with_posix_spawn_child");
    release_while_forked_child_lives(SPAWN_FORK, "release_with_fork_child");
    fork_during_release();
    fork_release_race();
    posix_lease_survives();
    acquire_fd_keeps_description_locks();
    fifo_writer_stays_blocked(0);
    fifo_writer_stays_blocked(1);
    fifo_writer_stays_blocked(2);
    non_images_refused();
    ptmx_never_opened();
    printf("%d passed, %d failed\n", h_passed, h_failed);
    return h_failed == 0 ? 0 : 1;
}
