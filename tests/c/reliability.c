/* What libfpl survives: crashes (of libfpl and QEMU holders, and between
 * lock and test), other descriptors closing, exec, 64 threads, hostile
 * input beyond abi_test.c, and use by an unprivileged user. The kernel's
 * view (/proc/locks, fdinfo) is the judge. Run by tests/reliability.rs
 * with FPL_SHIM pointing at the fault_shim.so LD_PRELOAD library. */
#include "qemu_harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/mount.h>
#include <sys/resource.h>

#define WRITE_BYTES (B(100) | B(101) | B(103) | B(201) | B(202) | B(203))

static const char *shim;

/* Starts this program as a helper ROLE with the fault shim preloaded and
 * the given shim variable set. */
static pid_t spawn_shimmed(const char *var, char *const argv[], int *out_fd) {
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) h_die("pipe");
    pid_t pid = fork();
    if (pid < 0) h_die("fork");
    if (pid == 0) {
        setenv("LD_PRELOAD", shim, 1);
        if (var) setenv(var, "1", 1);
        dup2(out[1], 1);
        execv(h_self, argv);
        _exit(127);
    }
    close(out[1]);
    if (out_fd) *out_fd = out[0]; else close(out[0]);
    return pid;
}

static void test_killed_between_lock_and_test(void) {
    h_test = "killed_between_lock_and_test";
    const char *img = h_image("between.img");
    char p[16], s[16];
    snprintf(p, sizeof p, "%u", FPL_MODE_WRITE_PERM);
    snprintf(s, sizeof s, "%u", FPL_MODE_WRITE_SHARE);
    char *argv[] = {(char *)h_self, (char *)"hold", (char *)img, p, s, (char *)"0", NULL};
    pid_t pid = spawn_shimmed("FPL_SHIM_STOP_AT_TEST", argv, NULL);
    int status = 0;
    CHECK(waitpid(pid, &status, WUNTRACED) == pid && WIFSTOPPED(status),
          "the helper did not stop at its first test (status %#x)", status);
    /* Stopped after locking, before testing: its bytes are there. */
    CHECK(h_proc_locks(h_ino(img), NULL) == WRITE_BYTES, "between lock and test: %#x",
          h_proc_locks(h_ino(img), NULL));
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "status %#x", status);
    CHECK(h_proc_locks(h_ino(img), NULL) == 0, "left behind: %#x", h_proc_locks(h_ino(img), NULL));
}

static void test_sigkill_of_holders(const q_qemu *q) {
    h_test = "sigkill_of_holders";
    const char *img = h_image("killed.img");
    h_helper holder;
    CHECK(h_hold(&holder, img, FPL_MODE_EXCLUSIVE_PERM, FPL_MODE_EXCLUSIVE_SHARE, 0) == 0, "%s",
          holder.reply);
    kill(holder.pid, SIGKILL);
    int status;
    waitpid(holder.pid, &status, 0);
    close(holder.to_child);
    close(holder.from_child);
    CHECK(h_proc_locks(h_ino(img), NULL) == 0, "libfpl holder's bytes outlive it");

    const char *qimg = q_create(q, "killed.qcow2", "qcow2", NULL);
    char *argv[] = {(char *)q_tool(q, "qemu-io"), (char *)"-f", (char *)"qcow2", (char *)qimg, NULL};
    q_proc io = q_start(argv);
    CHECK(q_wait_bytes(&io, qimg, B(100) | B(101) | B(103) | B(201) | B(203)), "qemu-io locked");
    kill(io.pid, SIGKILL);
    q_stop(&io);
    CHECK(h_proc_locks(h_ino(qimg), NULL) == 0, "QEMU's bytes outlive it");
    fpl_error err;
    CHECK(fpl_check(qimg, FPL_MODE_EXCLUSIVE_PERM, FPL_MODE_EXCLUSIVE_SHARE, 0, &err) == 0, "%s",
          err.message);
}

static void test_other_descriptors_close(void) {
    h_test = "other_descriptors_close";
    const char *img = h_image("close.img");
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    int fd = open(img, O_RDWR | O_CLOEXEC);
    char buf[16] = {0};
    CHECK(pwrite(fd, buf, sizeof buf, 0) == (ssize_t)sizeof buf, "write");
    close(fd);
    CHECK(h_proc_locks(h_ino(img), NULL) == WRITE_BYTES, "OFD locks lost on another close");
    fpl_release(lock);
}

/* In a helper with the shim's FPL_SHIM_NO_OFD (a kernel without OFD locks):
 * acquiring fails with -ENOLCK unless FPL_FLAG_ALLOW_POSIX, and with it the
 * documented hazard is real: closing another descriptor drops the locks. */
static int role_posix_hazard(const char *img) {
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    printf("no-flag %d %s\n", rc, strstr(err.message, "FPL_FLAG_ALLOW_POSIX") ? "names-flag" : err.message);
    rc = fpl_acquire(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, FPL_FLAG_ALLOW_POSIX, &lock, &err);
    printf("allow-posix %d\n", rc);
    int entries = 0;
    unsigned before = h_proc_locks(h_ino(img), &entries);
    printf("held %#x\n", before);
    int fd = open(img, O_RDONLY | O_CLOEXEC);
    close(fd);
    printf("after-close %#x\n", h_proc_locks(h_ino(img), NULL));
    fflush(stdout);
    fpl_release(lock);
    return 0;
}

static void test_posix_fallback_and_hazard(void) {
    h_test = "posix_fallback_and_hazard";
    const char *img = h_image("posix.img");
    char *argv[] = {(char *)h_self, (char *)"posix-hazard", (char *)img, NULL};
    int out;
    pid_t pid = spawn_shimmed("FPL_SHIM_NO_OFD", argv, &out);
    char text[1024] = {0};
    size_t len = 0;
    ssize_t n;
    while ((n = read(out, text + len, sizeof text - 1 - len)) > 0) len += (size_t)n;
    close(out);
    waitpid(pid, NULL, 0);
    char want[64];
    snprintf(want, sizeof want, "no-flag %d names-flag", -ENOLCK);
    CHECK(strstr(text, want) != NULL, "without OFD and without the flag: %s", text);
    CHECK(strstr(text, "allow-posix 0\n") != NULL, "%s", text);
    snprintf(want, sizeof want, "held %#x\n", WRITE_BYTES);
    CHECK(strstr(text, want) != NULL, "POSIX locks taken: %s", text);
    CHECK(strstr(text, "after-close 0\n") != NULL, "the hazard: close() drops POSIX locks: %s",
          text);
    CHECK(h_proc_locks(h_ino(img), NULL) == 0, "left behind");
}

static void test_exec_child_holds_nothing(void) {
    h_test = "exec_child_holds_nothing";
    const char *img = h_image("exec.img");
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire(img, FPL_MODE_EXCLUSIVE_PERM, FPL_MODE_EXCLUSIVE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    int go[2];
    CHECK(pipe(go) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        dup2(go[0], 0);
        close(go[1]);
        execlp("cat", "cat", (char *)NULL);
        _exit(127);
    }
    close(go[0]);
    /* Wait until the child has exec'd, then look at its descriptors. */
    char exe[PATH_MAX] = {0}, link[64];
    snprintf(link, sizeof link, "/proc/%d/exe", (int)pid);
    for (int i = 0; i < 500 && !strstr(exe, "cat"); i++) {
        ssize_t n = readlink(link, exe, sizeof exe - 1);
        exe[n > 0 ? n : 0] = 0;
        q_sleep_ms(10);
    }
    CHECK(strstr(exe, "cat") != NULL, "child exec'd: %s", exe);
    char dir[64], path[PATH_MAX + 64], target[PATH_MAX];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dir);
    int found = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n > 0) {
            target[n] = 0;
            if (strcmp(target, img) == 0) found = 1;
        }
    }
    if (d) closedir(d);
    CHECK(!found, "the exec'd child inherited the lock's descriptor");
    CHECK(fpl_release(lock) == 0, "release");
    CHECK(h_proc_locks(h_ino(img), NULL) == 0, "locks left while the child runs");
    close(go[1]);
    waitpid(pid, NULL, 0);
}

/* ---- 64 threads ------------------------------------------------------- */
#define THREADS 64
#define ROUNDS 200

static char shared_img[PATH_MAX];
static char own_img[THREADS][PATH_MAX];
static atomic_int writers_inside, readers_inside, violations, conflicts, failures;
static fpl_lock *handoff[THREADS];
static pthread_mutex_t handoff_mu = PTHREAD_MUTEX_INITIALIZER;

static void note_failure(const char *what, int rc, const fpl_error *err) {
    if (atomic_fetch_add(&failures, 1) < 5)
        fprintf(stderr, "threads: %s failed: %d %s\n", what, rc, err ? err->message : "");
}

static void release_someones(void) {
    /* Release a handle another thread acquired, if any is waiting. */
    pthread_mutex_lock(&handoff_mu);
    fpl_lock *l = NULL;
    for (int i = 0; i < THREADS && !l; i++)
        if (handoff[i]) {
            l = handoff[i];
            handoff[i] = NULL;
        }
    pthread_mutex_unlock(&handoff_mu);
    int rc = l ? fpl_release(l) : 0;
    if (rc != 0) note_failure("handed-off release", rc, NULL);
}

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;
    unsigned seed = (unsigned)id * 2654435761u;
    for (int r = 0; r < ROUNDS; r++) {
        seed = seed * 1103515245u + 12345u;
        int writer = (seed >> 16) % 4 == 0;
        fpl_lock *lock = NULL;
        fpl_error err;
        int rc;
        if (writer)
            rc = fpl_acquire(shared_img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE,
                             r % 2 ? FPL_FLAG_EXACT : 0, &lock, &err);
        else
            rc = fpl_acquire(shared_img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
        if (rc == -EAGAIN) {
            atomic_fetch_add(&conflicts, 1);
        } else if (rc != 0) {
            note_failure("acquire", rc, &err);
        } else {
            if (writer) {
                if (atomic_fetch_add(&writers_inside, 1) != 0 || atomic_load(&readers_inside))
                    atomic_fetch_add(&violations, 1);
                sched_yield();
                atomic_fetch_sub(&writers_inside, 1);
            } else {
                atomic_fetch_add(&readers_inside, 1);
                if (atomic_load(&writers_inside)) atomic_fetch_add(&violations, 1);
                sched_yield();
                atomic_fetch_sub(&readers_inside, 1);
                /* Loosen to read-shared before letting go: never refused. */
                rc = fpl_update(lock, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &err);
                if (rc != 0) note_failure("loosening update", rc, &err);
            }
            rc = fpl_release(lock);
            if (rc != 0) note_failure("release", rc, NULL);
        }
        /* A handle on this thread's own image, released by some other
         * thread (readers, so an old handle still waiting is no conflict). */
        fpl_lock *own = NULL;
        if ((rc = fpl_acquire(own_img[id], FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &own,
                              &err)) != 0) {
            note_failure("own acquire", rc, &err);
        } else if ((rc = fpl_update(own, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0,
                                    &err)) != 0) {
            note_failure("own update", rc, &err);
            fpl_release(own);
        } else {
            pthread_mutex_lock(&handoff_mu);
            fpl_lock *old = handoff[id];
            handoff[id] = own;
            pthread_mutex_unlock(&handoff_mu);
            if (old) fpl_release(old);
        }
        release_someones();
    }
    return NULL;
}

static void test_threads(void) {
    h_test = "threads";
    snprintf(shared_img, sizeof shared_img, "%s", h_image("threads-shared.img"));
    for (int i = 0; i < THREADS; i++) {
        char name[64];
        snprintf(name, sizeof name, "thread-%d.img", i);
        snprintf(own_img[i], PATH_MAX, "%s", h_image(name));
    }
    int fds_before = h_count_fds();
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < THREADS; i++)
        if (handoff[i]) {
            fpl_release(handoff[i]);
            handoff[i] = NULL;
        }
    CHECK(atomic_load(&violations) == 0, "%d violations", atomic_load(&violations));
    CHECK(atomic_load(&failures) == 0, "%d failures", atomic_load(&failures));
    int leaked = 0;
    if (h_proc_locks(h_ino(shared_img), NULL)) leaked++;
    for (int i = 0; i < THREADS; i++)
        if (h_proc_locks(h_ino(own_img[i]), NULL)) leaked++;
    CHECK(leaked == 0, "%d images still locked", leaked);
    CHECK(h_count_fds() == fds_before, "descriptors %d -> %d", fds_before, h_count_fds());
    printf("threads: %d x %d rounds, %d conflicts refused, 0 violations\n", THREADS, ROUNDS,
           atomic_load(&conflicts));
}

/* ---- hostile input beyond abi_test.c --------------------------------- */
static void test_more_hostile_input(void) {
    h_test = "more_hostile_input";
    fpl_lock *lock = NULL;
    fpl_error err;
    int fds_before = h_count_fds();

    /* A unix socket: not an image, refused without opening it (open(2)
     * itself would say ENXIO). */
    char sock[100];
    snprintf(sock, sizeof sock, "%.80s/sock", h_dir);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
    CHECK(bind(s, (struct sockaddr *)&sa, sizeof sa) == 0, "bind");
    int rc = fpl_acquire(sock, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_acquire_fd(s, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EINVAL, err);
    close(s);

    /* Descriptor exhaustion. */
    const char *img = h_image("emfile.img");
    struct rlimit old, low;
    getrlimit(RLIMIT_NOFILE, &old);
    low = old;
    int lowest = dup(0); /* the lowest free descriptor number */
    close(lowest);
    low.rlim_cur = (rlim_t)lowest;
    setrlimit(RLIMIT_NOFILE, &low);
    rc = fpl_acquire(img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    int rc2 = fpl_check(img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &err);
    setrlimit(RLIMIT_NOFILE, &old);
    CHECK(rc == -EMFILE && rc2 == -EMFILE, "EMFILE: %d %d %s", rc, rc2, err.message);
    CHECK(h_proc_locks(h_ino(img), NULL) == 0, "locks left");

    /* A read-only mount (root only): read locks still work there. */
    if (getuid() == 0) {
        char mnt[PATH_MAX];
        snprintf(mnt, sizeof mnt, "%s/ro", h_dir);
        mkdir(mnt, 0755);
        if (mount("tmpfs", mnt, "tmpfs", 0, "size=4m") == 0) {
            char f[PATH_MAX + 16];
            snprintf(f, sizeof f, "%s/img", mnt);
            int fd = open(f, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
            close(fd);
            CHECK(mount(NULL, mnt, NULL, MS_REMOUNT | MS_RDONLY, NULL) == 0, "remount ro: %s",
                  strerror(errno));
            rc = fpl_acquire(f, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
            CHECK_RC(rc, 0, err);
            CHECK(h_proc_locks(h_ino(f), NULL) == WRITE_BYTES, "bytes on a read-only mount");
            if (rc == 0) fpl_release(lock);
            umount2(mnt, MNT_DETACH);
        } else {
            CHECK(0, "cannot mount tmpfs as root: %s", strerror(errno));
        }
    }
    CHECK(h_count_fds() == fds_before, "descriptors %d -> %d", fds_before, h_count_fds());
}

/* ---- unprivileged use -------------------------------------------------- */
static void test_unprivileged(void) {
    h_test = "unprivileged";
    if (getuid() != 0) {
        printf("unprivileged: already running as uid %d\n", (int)getuid());
    }
    /* A folder and image everybody may read. */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/shared", h_dir);
    mkdir(dir, 0755);
    chmod(h_dir, 0755);
    char img[PATH_MAX + 16];
    snprintf(img, sizeof img, "%s/pub.img", dir);
    int fd = open(img, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    close(fd);
    h_helper holder;
    CHECK(h_hold(&holder, img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0) == 0, "%s",
          holder.reply);
    int out[2];
    CHECK(pipe2(out, O_CLOEXEC) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        if (getuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(90);
        fpl_status st;
        fpl_holder hs[4];
        fpl_error err;
        int q = fpl_query(img, FPL_QUERY_HOLDERS, &st, hs, 4, &err);
        fpl_lock *lock = NULL;
        int a = fpl_acquire(img, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &lock, &err);
        if (a == 0) fpl_release(lock);
        fpl_error cerr;
        int c = fpl_check(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &cerr);
        dprintf(out[1], "query %d perm %#x flags %#x holders %u acquire %d check %d pid %d msg %s\n",
                q, st.perm, st.flags, st.n_holders, a, c, cerr.holder_pid, cerr.message);
        _exit(0);
    }
    close(out[1]);
    char text[1024] = {0};
    size_t len = 0;
    ssize_t n;
    while ((n = read(out[0], text + len, sizeof text - 1 - len)) > 0) len += (size_t)n;
    close(out[0]);
    waitpid(pid, NULL, 0);
    char want[128];
    snprintf(want, sizeof want, "query 0 perm %#x flags %#x holders 0 acquire 0 check %d pid -1 ",
             FPL_MODE_WRITE_PERM, FPL_STATUS_HOLDERS_PARTIAL, -EAGAIN);
    CHECK(strstr(text, want) != NULL, "as nobody: %s (want %s)", text, want);
    CHECK(strstr(text, "Failed to get \"write\" lock\nIs another process") != NULL, "%s", text);
    CHECK(h_finish(&holder) == 0, "helper");
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "posix-hazard") == 0) return role_posix_hazard(argv[2]);
    if (argc > 1) return h_helper_main(argc, argv);
    shim = getenv("FPL_SHIM");
    if (!shim) {
        fprintf(stderr, "FPL_SHIM is not set: run through `cargo test --test reliability`\n");
        return 2;
    }
    atexit(q_kill_all);
    h_init();
    q_load_versions();
    test_killed_between_lock_and_test();
    test_sigkill_of_holders(&q_versions[0]);
    test_other_descriptors_close();
    test_posix_fallback_and_hazard();
    test_exec_child_holds_nothing();
    test_threads();
    test_more_hostile_input();
    test_unprivileged();
    printf("%d passed, %d failed\n", h_passed, h_failed);
    return h_failed == 0 ? 0 : 1;
}
