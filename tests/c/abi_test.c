/* libfpl's C ABI tests: two real processes, the kernel's own view of the
 * locks (/proc/locks, fdinfo) as the judge. Run by tests/c_abi.rs. */
#include "harness.h"

#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>

#define WRITE_BYTES (B(100) | B(101) | B(103) | B(201) | B(202) | B(203))
#define READ_BYTES (B(100) | B(201) | B(202) | B(203))
#define EXCL_BYTES (WRITE_BYTES | B(200))

static void test_version(void) {
    h_test = "version";
    CHECK(strcmp(fpl_version(), FPL_VERSION_STRING) == 0, "%s", fpl_version());
}

static void test_acquire_release_bytes(void) {
    h_test = "acquire_release_bytes";
    struct {
        unsigned perm, shared, bytes;
    } presets[] = {
        {FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, B(100)},
        {FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, READ_BYTES},
        {FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, WRITE_BYTES},
        {FPL_MODE_EXCLUSIVE_PERM, FPL_MODE_EXCLUSIVE_SHARE, EXCL_BYTES},
    };
    const char *img = h_image("bytes.img");
    for (size_t i = 0; i < 4; i++) {
        for (unsigned flags = 0; flags <= FPL_FLAG_EXACT; flags++) {
            fpl_lock *lock = NULL;
            fpl_error err;
            int rc = fpl_acquire(img, presets[i].perm, presets[i].shared, flags, &lock, &err);
            CHECK_RC(rc, 0, err);
            CHECK(h_proc_locks(h_ino(img), NULL) == presets[i].bytes, "preset %zu flags %u: %#x",
                  i, flags, h_proc_locks(h_ino(img), NULL));
            CHECK(fpl_release(lock) == 0, "release");
            CHECK(h_proc_locks(h_ino(img), NULL) == 0, "left after release: %#x",
                  h_proc_locks(h_ino(img), NULL));
        }
    }
}

static void test_conflicts_between_processes(void) {
    h_test = "conflicts_between_processes";
    const char *img = h_image("conflict.img");
    h_helper writer;
    CHECK(h_hold(&writer, img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0) == 0, "helper: %s",
          writer.reply);
    int before;
    unsigned held = h_proc_locks(h_ino(img), &before);
    CHECK(held == WRITE_BYTES, "%#x", held);

    /* A second writer: its first failing test is 201 ("write"). */
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EAGAIN, err);
    CHECK(err.code == -EAGAIN, "code %d", err.code);
    CHECK(err.byte == 201 && err.perm == FPL_PERM_WRITE, "byte %u perm %u", err.byte, err.perm);
    CHECK(h_holder_is(err.holder_pid, writer.pid), "holder %d want %d", err.holder_pid, writer.pid);
    CHECK(strstr(err.message, "Failed to get \"write\" lock") != NULL, "%s", err.message);
    CHECK(strstr(err.message, "Is another process using the image [") != NULL, "%s", err.message);
    CHECK(strstr(err.message, img) != NULL, "%s", err.message);
    CHECK(lock == NULL, "out written on failure");
    int after;
    CHECK(h_proc_locks(h_ino(img), &after) == WRITE_BYTES && after == before,
          "rollback left locks: %d entries, %d before", after, before);

    /* The same outcome with EXACT: QEMU tests 201 first too. */
    rc = fpl_acquire(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, FPL_FLAG_EXACT, &lock, &err);
    CHECK_RC(rc, -EAGAIN, err);
    CHECK(err.byte == 201, "byte %u", err.byte);

    /* fpl_check says the same and takes nothing. */
    rc = fpl_check(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &err);
    CHECK_RC(rc, -EAGAIN, err);
    CHECK(err.byte == 201 && h_holder_is(err.holder_pid, writer.pid), "byte %u pid %d", err.byte,
          err.holder_pid);
    /* A reader sharing everything is admitted next to the writer... */
    rc = fpl_check(img, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &err);
    CHECK_RC(rc, 0, err);
    rc = fpl_acquire(img, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    /* ...a reader wanting a stable image is not: the writer uses write. */
    rc = fpl_check(img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &err);
    CHECK_RC(rc, -EAGAIN, err);
    CHECK(err.byte == 101 && strstr(err.message, "Failed to get shared \"write\" lock"), "%u %s",
          err.byte, err.message);
    CHECK(fpl_release(lock) == 0, "release");
    CHECK(h_finish(&writer) == 0, "helper exit");
    CHECK(h_proc_locks(h_ino(img), NULL) == 0, "locks left");

    /* The other direction: a reader sharing all blocks exclusive only. */
    h_helper reader;
    CHECK(h_hold(&reader, img, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0) == 0,
          "helper: %s", reader.reply);
    rc = fpl_acquire(img, FPL_MODE_EXCLUSIVE_PERM, FPL_MODE_EXCLUSIVE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EAGAIN, err);
    CHECK(err.byte == 100 && err.perm == FPL_PERM_CONSISTENT_READ, "byte %u", err.byte);
    CHECK(strstr(err.message, "Failed to get shared \"consistent read\" lock") != NULL, "%s",
          err.message);
    rc = fpl_acquire(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    CHECK(fpl_release(lock) == 0, "release");
    CHECK(h_finish(&reader) == 0, "helper exit");

    /* A helper refused by us gets the same answer across processes. */
    h_helper first, second;
    CHECK(h_hold(&first, img, FPL_MODE_EXCLUSIVE_PERM, 0, 0) == 0, "%s", first.reply);
    CHECK(h_hold(&second, img, FPL_MODE_READ_SHARED_PERM, FPL_PERM_ALL, 0) != 0, "%s",
          second.reply);
    CHECK(strstr(second.reply, "err -11 Failed to get \"consistent read\" lock") != NULL, "%s",
          second.reply);
    h_finish(&second);
    CHECK(h_finish(&first) == 0, "helper exit");
}

static void test_exclusive_lock_of_other_software(void) {
    h_test = "exclusive_lock_of_other_software";
    const char *img = h_image("xlock.img");
    h_helper other;
    char *argv[] = {(char *)h_self, (char *)"xlock", (char *)img, NULL};
    CHECK(h_spawn(&other, argv) == 0, "%s", other.reply);
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire(img, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EAGAIN, err);
    CHECK(strstr(err.message, "Failed to lock byte 100") != NULL, "%s", err.message);
    CHECK(err.byte == 100 && h_holder_is(err.holder_pid, other.pid), "byte %u pid %d", err.byte,
          err.holder_pid);
    rc = fpl_check(img, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &err);
    CHECK_RC(rc, -EAGAIN, err);
    CHECK(strstr(err.message, "Failed to lock byte 100") != NULL, "%s", err.message);
    h_finish(&other);
}

static void test_update(void) {
    h_test = "update";
    const char *img = h_image("update.img");
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire(img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);

    /* Another process reads too: upgrading to write must fail and leave
     * our bytes exactly as they were. */
    h_helper reader;
    CHECK(h_hold(&reader, img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0) == 0, "%s",
          reader.reply);
    int entries_before;
    h_proc_locks(h_ino(img), &entries_before);
    rc = fpl_update(lock, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &err);
    CHECK_RC(rc, -EAGAIN, err);
    CHECK(err.byte == 201 && h_holder_is(err.holder_pid, reader.pid), "byte %u pid %d", err.byte,
          err.holder_pid);
    int entries_after;
    unsigned held = h_proc_locks(h_ino(img), &entries_after);
    CHECK(held == READ_BYTES && entries_after == entries_before, "%#x %d/%d", held,
          entries_after, entries_before);

    /* Loosening never tests and never fails. */
    rc = fpl_update(lock, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &err);
    CHECK_RC(rc, 0, err);
    CHECK(h_finish(&reader) == 0, "helper exit");
    CHECK(h_proc_locks(h_ino(img), NULL) == B(100), "%#x", h_proc_locks(h_ino(img), NULL));

    /* Alone now: upgrade to write, then to exclusive, and back down. */
    rc = fpl_update(lock, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &err);
    CHECK_RC(rc, 0, err);
    CHECK(h_proc_locks(h_ino(img), NULL) == WRITE_BYTES, "%#x", h_proc_locks(h_ino(img), NULL));
    h_helper writer_refused;
    CHECK(h_hold(&writer_refused, img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0) != 0, "%s",
          writer_refused.reply);
    h_finish(&writer_refused);
    rc = fpl_update(lock, FPL_MODE_EXCLUSIVE_PERM, FPL_MODE_EXCLUSIVE_SHARE, FPL_FLAG_EXACT, &err);
    CHECK_RC(rc, 0, err);
    CHECK(h_proc_locks(h_ino(img), NULL) == EXCL_BYTES, "%#x", h_proc_locks(h_ino(img), NULL));

    /* A downgrade to read-shared lets another writer in. */
    rc = fpl_update(lock, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &err);
    CHECK_RC(rc, 0, err);
    h_helper writer;
    CHECK(h_hold(&writer, img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0) == 0, "%s",
          writer.reply);
    CHECK(h_finish(&writer) == 0, "helper exit");

    /* Bad updates change nothing. */
    rc = fpl_update(lock, 0x10, 0, 0, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_update(lock, FPL_PERM_CONSISTENT_READ, 0x20, 0, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_update(lock, FPL_PERM_CONSISTENT_READ, FPL_PERM_ALL, 0x80, &err);
    CHECK_RC(rc, -EINVAL, err);
    CHECK(h_proc_locks(h_ino(img), NULL) == B(100), "%#x", h_proc_locks(h_ino(img), NULL));
    rc = fpl_update(NULL, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &err);
    CHECK_RC(rc, -EINVAL, err);
    CHECK(fpl_release(lock) == 0, "release");
    CHECK(h_proc_locks(h_ino(img), NULL) == 0, "locks left");
}

static void test_query(void) {
    h_test = "query";
    const char *img = h_image("query.img");
    fpl_status st;
    fpl_holder holders[4];
    fpl_error err;
    int rc = fpl_query(img, FPL_QUERY_HOLDERS, &st, holders, 4, &err);
    CHECK_RC(rc, 0, err);
    CHECK(st.perm == 0 && st.unshared == 0 && st.flags == 0 && st.n_holders == 0,
          "free image: %u %u %u %u", st.perm, st.unshared, st.flags, st.n_holders);

    h_helper writer;
    CHECK(h_hold(&writer, img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0) == 0, "%s",
          writer.reply);
    rc = fpl_query(img, FPL_QUERY_HOLDERS, &st, holders, 4, &err);
    CHECK_RC(rc, 0, err);
    CHECK(st.perm == FPL_MODE_WRITE_PERM, "perm %#x", st.perm);
    CHECK(st.unshared == (FPL_PERM_WRITE | FPL_PERM_WRITE_UNCHANGED | FPL_PERM_RESIZE),
          "unshared %#x", st.unshared);
    CHECK(st.n_holders == 1, "n_holders %u", st.n_holders);
    CHECK(holders[0].pid == writer.pid, "pid %d want %d", holders[0].pid, writer.pid);
    CHECK(holders[0].fd >= 0, "fd %d", holders[0].fd);
    CHECK(holders[0].perm == st.perm && holders[0].unshared == st.unshared, "%#x %#x",
          holders[0].perm, holders[0].unshared);
    CHECK(strcmp(holders[0].name, "abi_test") == 0, "name '%s'", holders[0].name);

    /* Our own handle counts too; cap 0 still counts every holder. */
    fpl_lock *mine = NULL;
    rc = fpl_acquire(img, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &mine, &err);
    CHECK_RC(rc, 0, err);
    rc = fpl_query(img, FPL_QUERY_HOLDERS, &st, NULL, 0, &err);
    CHECK_RC(rc, 0, err);
    CHECK(st.n_holders == 2, "n_holders %u", st.n_holders);
    rc = fpl_query(img, FPL_QUERY_HOLDERS, &st, holders, 1, &err);
    CHECK_RC(rc, 0, err);
    CHECK(st.n_holders == 2 && holders[0].pid == (writer.pid < getpid() ? writer.pid : getpid()),
          "sorted by pid");
    /* Without FPL_QUERY_HOLDERS nobody is named. */
    rc = fpl_query(img, 0, &st, NULL, 0, &err);
    CHECK_RC(rc, 0, err);
    CHECK(st.n_holders == 0 && st.perm == FPL_MODE_WRITE_PERM, "%u %#x", st.n_holders, st.perm);
    CHECK(fpl_release(mine) == 0, "release");
    CHECK(h_finish(&writer) == 0, "helper exit");

    /* Old QEMU's graph-mod bytes and libvirt's byte 0. */
    h_helper raw;
    char *argv[] = {(char *)h_self, (char *)"raw", (char *)img, NULL};
    CHECK(h_spawn(&raw, argv) == 0, "%s", raw.reply);
    rc = fpl_query(img, FPL_QUERY_HOLDERS, &st, holders, 4, &err);
    CHECK_RC(rc, 0, err);
    CHECK(st.flags == (FPL_STATUS_LEGACY | FPL_STATUS_LIBVIRT), "flags %#x", st.flags);
    CHECK(st.perm == 0 && st.unshared == 0, "%#x %#x", st.perm, st.unshared);
    CHECK(st.n_holders == 2 && holders[0].pid == raw.pid && holders[1].pid == raw.pid,
          "n %u", st.n_holders);
    /* Strict mode neither locks nor trips on them. */
    fpl_lock *lock = NULL;
    rc = fpl_acquire(img, FPL_MODE_EXCLUSIVE_PERM, FPL_MODE_EXCLUSIVE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    CHECK((h_proc_locks(h_ino(img), NULL) & ~(B(0) | B(104) | B(204))) == EXCL_BYTES, "%#x",
          h_proc_locks(h_ino(img), NULL));
    CHECK(fpl_release(lock) == 0, "release");
    h_finish(&raw);
}

static void test_query_many(void) {
    h_test = "query_many";
    const char *a = h_image("many-a.img");
    char b[PATH_MAX], missing[PATH_MAX], free_img[PATH_MAX];
    snprintf(b, sizeof b, "%s", h_image("many-b.img"));
    snprintf(free_img, sizeof free_img, "%s", h_image("many-free.img"));
    snprintf(missing, sizeof missing, "%s/many-missing.img", h_dir);
    h_helper writer, reader;
    CHECK(h_hold(&writer, a, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0) == 0, "%s", writer.reply);
    CHECK(h_hold(&reader, b, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0) == 0, "%s", reader.reply);
    const char *paths[] = {a, missing, b, free_img, a};
    fpl_status st[5];
    int results[5];
    fpl_holder hs[8];
    size_t total = 0;
    fpl_error err;
    int rc = fpl_query_many(paths, 5, FPL_QUERY_HOLDERS, st, results, hs, 8, &total, &err);
    CHECK_RC(rc, -ENOENT, err);
    CHECK(strstr(err.message, "many-missing.img") != NULL, "%s", err.message);
    CHECK(results[0] == 0 && results[1] == -ENOENT && results[2] == 0 && results[3] == 0 &&
              results[4] == 0,
          "results %d %d %d %d %d", results[0], results[1], results[2], results[3], results[4]);
    CHECK(st[0].perm == FPL_MODE_WRITE_PERM && st[0].n_holders == 1, "a: %#x %u", st[0].perm,
          st[0].n_holders);
    CHECK(st[2].perm == FPL_PERM_CONSISTENT_READ && st[2].n_holders == 1, "b: %#x %u", st[2].perm,
          st[2].n_holders);
    CHECK(st[3].perm == 0 && st[3].unshared == 0 && st[3].n_holders == 0, "free");
    CHECK(st[4].perm == st[0].perm && st[4].n_holders == 1, "a named twice");
    CHECK(total == 3, "total %zu", total);
    CHECK(hs[0].pid == writer.pid && hs[1].pid == reader.pid && hs[2].pid == writer.pid,
          "holders in image order: %d %d %d", hs[0].pid, hs[1].pid, hs[2].pid);
    /* A cap too small: counts still right. */
    rc = fpl_query_many(paths + 2, 3, FPL_QUERY_HOLDERS, st, results, hs, 1, &total, &err);
    CHECK_RC(rc, 0, err);
    CHECK(total == 2 && hs[0].pid == reader.pid, "total %zu", total);
    /* Bad arguments write nothing. */
    results[0] = 12345;
    rc = fpl_query_many(NULL, 2, 0, st, results, NULL, 0, NULL, &err);
    CHECK_RC(rc, -EINVAL, err);
    const char *with_null[] = {a, NULL};
    rc = fpl_query_many(with_null, 2, 0, st, results, NULL, 0, NULL, &err);
    CHECK_RC(rc, -EINVAL, err);
    CHECK(results[0] == 12345, "written on bad arguments");
    rc = fpl_query_many(paths, 1, 0x8, st, results, NULL, 0, NULL, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_query_many(NULL, 0, 0, NULL, NULL, NULL, 0, NULL, &err);
    CHECK_RC(rc, 0, err);
    CHECK(h_finish(&writer) == 0 && h_finish(&reader) == 0, "helpers");
}

static void test_acquire_fd(void) {
    h_test = "acquire_fd";
    const char *img = h_image("fd.img");
    int fd = open(img, O_RDWR | O_CLOEXEC);
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire_fd(fd, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    CHECK(h_fd_locks(fd) == WRITE_BYTES, "on the caller's description: %#x", h_fd_locks(fd));
    close(fd);
    CHECK(h_proc_locks(h_ino(img), NULL) == WRITE_BYTES, "lost when the caller closed its fd");
    CHECK(fpl_release(lock) == 0, "release");
    CHECK(h_proc_locks(h_ino(img), NULL) == 0, "locks left");

    /* Bytes the description held before are the caller's: a rollback and a
     * release leave them alone. */
    fd = open(img, O_RDONLY | O_CLOEXEC);
    struct flock fl = {0};
    fl.l_type = F_RDLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 100;
    fl.l_len = 1;
    CHECK(fcntl(fd, F_OFD_SETLK, &fl) == 0, "raw lock");
    h_helper reader;
    CHECK(h_hold(&reader, img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0) == 0, "%s",
          reader.reply);
    rc = fpl_acquire_fd(fd, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EAGAIN, err);
    CHECK(h_fd_locks(fd) == B(100), "after rollback: %#x", h_fd_locks(fd));
    CHECK(h_finish(&reader) == 0, "helper exit");
    rc = fpl_acquire_fd(fd, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    CHECK(fpl_release(lock) == 0, "release");
    CHECK(h_fd_locks(fd) == B(100), "after release: %#x", h_fd_locks(fd));
    close(fd);

    /* Bad descriptors. */
    int before = h_count_fds();
    rc = fpl_acquire_fd(-1, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EBADF, err);
    int closed = open(img, O_RDONLY | O_CLOEXEC);
    close(closed);
    rc = fpl_acquire_fd(closed, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EBADF, err);
    int wronly = open(img, O_WRONLY | O_CLOEXEC);
    rc = fpl_acquire_fd(wronly, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EBADF, err);
    close(wronly);
    int dirfd = open(h_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    rc = fpl_acquire_fd(dirfd, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EISDIR, err);
    close(dirfd);
    int pipefd[2];
    CHECK(pipe2(pipefd, O_CLOEXEC) == 0, "pipe");
    rc = fpl_acquire_fd(pipefd[0], FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EINVAL, err);
    close(pipefd[0]);
    close(pipefd[1]);
    fd = open(img, O_RDONLY | O_CLOEXEC);
    rc = fpl_acquire_fd(fd, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, NULL, &err);
    CHECK_RC(rc, -EINVAL, err);
    close(fd);
    CHECK(h_count_fds() == before, "descriptors leaked: %d -> %d", before, h_count_fds());
}

static void test_release_despite_forked_child(void) {
    h_test = "release_despite_forked_child";
    const char *img = h_image("fork.img");
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire(img, FPL_MODE_EXCLUSIVE_PERM, FPL_MODE_EXCLUSIVE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    int go[2];
    CHECK(pipe2(go, O_CLOEXEC) == 0, "pipe");
    pid_t child = fork();
    if (child == 0) {
        /* Keeps every descriptor, the lock's included, until told to go. */
        char c;
        close(go[1]);
        while (read(go[0], &c, 1) > 0) {}
        _exit(0);
    }
    close(go[0]);
    CHECK(fpl_release(lock) == 0, "release");
    CHECK(h_proc_locks(h_ino(img), NULL) == 0, "the child keeps the image locked: %#x",
          h_proc_locks(h_ino(img), NULL));
    rc = fpl_check(img, FPL_MODE_EXCLUSIVE_PERM, FPL_MODE_EXCLUSIVE_SHARE, 0, &err);
    CHECK_RC(rc, 0, err);
    close(go[1]);
    waitpid(child, NULL, 0);
}

static void *release_on_thread(void *lock) {
    return (void *)(intptr_t)fpl_release(lock);
}

static void test_release_on_other_thread(void) {
    h_test = "release_on_other_thread";
    const char *img = h_image("thread.img");
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire(img, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    pthread_t t;
    void *ret = (void *)1;
    CHECK(pthread_create(&t, NULL, release_on_thread, lock) == 0, "thread");
    pthread_join(t, &ret);
    CHECK(ret == NULL, "release on thread returned %ld", (long)(intptr_t)ret);
    CHECK(h_proc_locks(h_ino(img), NULL) == 0, "locks left");
}

static void test_bad_input(void) {
    h_test = "bad_input";
    const char *img = h_image("bad.img");
    int fds_before = h_count_fds();
    int entries_before;
    h_proc_locks(h_ino(img), &entries_before);
    fpl_lock *lock = NULL;
    fpl_error err;
    fpl_status st;
    fpl_holder holders[1];
    int rc;

    rc = fpl_acquire(NULL, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EINVAL, err);
    CHECK(err.code == -EINVAL && err.message[0] != 0 && err.holder_pid == -1, "%s", err.message);
    rc = fpl_acquire(img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, NULL, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_acquire(img, 0x10, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_acquire(img, 0x80000000u, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_acquire(img, FPL_MODE_READ_PERM, 0x1f, 0, &lock, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_acquire(img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0x40, &lock, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_acquire(img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, NULL);
    CHECK(rc == 0, "NULL err on success: %d", rc);
    CHECK(fpl_release(lock) == 0, "release");
    rc = fpl_acquire(NULL, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, NULL);
    CHECK(rc == -EINVAL, "NULL err on failure: %d", rc);
    CHECK(fpl_release(NULL) == 0, "release(NULL)");

    rc = fpl_check(NULL, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_check(img, 0x10, 0, 0, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_check(img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0x100, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_query(NULL, 0, &st, NULL, 0, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_query(img, 0, NULL, NULL, 0, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_query(img, FPL_QUERY_HOLDERS, &st, NULL, 1, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_query(img, 0x40, &st, holders, 1, &err);
    CHECK_RC(rc, -EINVAL, err);

    /* Paths. */
    char missing[PATH_MAX];
    snprintf(missing, sizeof missing, "%s/missing.img", h_dir);
    rc = fpl_acquire(missing, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -ENOENT, err);
    CHECK(strstr(err.message, "missing.img") != NULL, "%s", err.message);
    rc = fpl_check(missing, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &err);
    CHECK_RC(rc, -ENOENT, err);
    rc = fpl_query(missing, 0, &st, NULL, 0, &err);
    CHECK_RC(rc, -ENOENT, err);
    rc = fpl_acquire("", FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -ENOENT, err);
    rc = fpl_acquire(h_dir, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EISDIR, err);
    rc = fpl_query(h_dir, 0, &st, NULL, 0, &err);
    CHECK_RC(rc, -EISDIR, err);
    char fifo[PATH_MAX];
    snprintf(fifo, sizeof fifo, "%s/fifo", h_dir);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo");
    /* Would block forever in open(2) without O_NONBLOCK. */
    rc = fpl_acquire(fifo, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_check(fifo, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_acquire("/dev/null", FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EINVAL, err);
    /* A socket, listening or not: open(2) would say ENXIO; the O_PATH
     * look says it is no image first. */
    char sock_path[PATH_MAX];
    snprintf(sock_path, sizeof sock_path, "%s/sock", h_dir);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(sock >= 0, "socket");
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    CHECK(strlen(sock_path) < sizeof addr.sun_path, "socket path fits");
    memcpy(addr.sun_path, sock_path, strlen(sock_path) + 1);
    CHECK(bind(sock, (struct sockaddr *)&addr, sizeof addr) == 0 && listen(sock, 1) == 0,
          "bind and listen");
    rc = fpl_acquire(sock_path, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_check(sock_path, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_query(sock_path, 0, &st, NULL, 0, &err);
    CHECK_RC(rc, -EINVAL, err);
    rc = fpl_acquire_fd(sock, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -EINVAL, err);
    close(sock);
    char loop[PATH_MAX];
    snprintf(loop, sizeof loop, "%s/loop", h_dir);
    CHECK(symlink(loop, loop) == 0, "symlink");
    rc = fpl_acquire(loop, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -ELOOP, err);
    static char longpath[PATH_MAX + 16];
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[0] = '/';
    rc = fpl_acquire(longpath, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &lock, &err);
    CHECK_RC(rc, -ENAMETOOLONG, err);

    /* Not UTF-8: paths are bytes. */
    char odd[PATH_MAX];
    snprintf(odd, sizeof odd, "%s/\xff\xfe-image", h_dir);
    int ofd = open(odd, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    CHECK(ofd >= 0, "create odd name");
    close(ofd);
    rc = fpl_acquire(odd, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    CHECK_RC(rc, 0, err);
    CHECK(h_proc_locks(h_ino(odd), NULL) == WRITE_BYTES, "bytes on odd name");
    rc = fpl_check(odd, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &err);
    CHECK_RC(rc, -EAGAIN, err);
    CHECK(strstr(err.message, "\xff\xfe") == NULL, "raw bytes in a message: %s", err.message);
    CHECK(fpl_release(lock) == 0, "release");

    /* Unreadable for a non-root user (as root: in a child that drops to
     * nobody). */
    const char *secret = h_image("secret.img");
    CHECK(chmod(secret, 0600) == 0, "chmod");
    pid_t child = fork();
    if (child == 0) {
        if (getuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(90);
        fpl_error e;
        fpl_lock *l = NULL;
        int r = fpl_acquire(secret, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &l, &e);
        _exit(r == -EACCES && strstr(e.message, "secret.img") ? 0 : 91);
    }
    int status = -1;
    waitpid(child, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "unreadable file: status %#x", status);

    /* Success zeroes ERR. */
    memset(&err, 0x7f, sizeof err);
    rc = fpl_check(img, FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0, &err);
    CHECK(rc == 0 && err.code == 0 && err.perm == 0 && err.byte == 0 && err.holder_pid == 0 &&
              err.message[0] == 0,
          "err not zeroed: %d '%.20s'", err.code, err.message);

    int entries_after;
    CHECK(h_proc_locks(h_ino(img), &entries_after) == 0 && entries_after == entries_before,
          "locks left");
    CHECK(h_count_fds() == fds_before, "descriptors leaked: %d -> %d", fds_before, h_count_fds());
}

int main(int argc, char **argv) {
    h_self = "/proc/self/exe";
    if (argc > 1) return h_helper_main(argc, argv);
    h_init();
    test_version();
    test_acquire_release_bytes();
    test_conflicts_between_processes();
    test_exclusive_lock_of_other_software();
    test_update();
    test_query();
    test_query_many();
    test_acquire_fd();
    test_release_despite_forked_child();
    test_release_on_other_thread();
    test_bad_input();
    printf("%d passed, %d failed\n", h_passed, h_failed);
    return h_failed == 0 ? 0 : 1;
}
