/* demo.c: libfpl in one page of C.
 *
 * Makes an image in a temporary folder, takes QEMU's "write" lock on it,
 * shows that a second process is refused with QEMU's own message and who
 * holds the image, then releases and lets the second process in.
 *
 *   cargo build --release
 *   cc -std=c11 -Wall -Iinclude c-examples/demo.c -Ltarget/release -lfpl \
 *      -Wl,-rpath,"$PWD/target/release" -o target/fpl-demo && target/fpl-demo
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fpl.h"

static const char *perm_names(uint32_t bits, char *buf, size_t len) {
    static const char *names[] = {"consistent read", "write", "write unchanged", "resize"};
    buf[0] = 0;
    for (int i = 0; i < 4; i++) {
        if (bits & (1u << i)) {
            if (buf[0]) strncat(buf, ", ", len - strlen(buf) - 1);
            strncat(buf, names[i], len - strlen(buf) - 1);
        }
    }
    if (!buf[0]) strncat(buf, "nothing", len - 1);
    return buf;
}

/* What a second program would do: try to take the write lock. */
static int second_writer(const char *image) {
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire(image, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    if (rc == -EAGAIN) {
        printf("[pid %d] refused (byte %u, holder pid %d):\n  %s\n", (int)getpid(), err.byte,
               err.holder_pid, err.message);
        return 1;
    }
    if (rc < 0) {
        printf("[pid %d] error %d: %s\n", (int)getpid(), rc, err.message);
        return 2;
    }
    printf("[pid %d] got the write lock\n", (int)getpid());
    return fpl_release(lock) == 0 ? 0 : 2;
}

static int run_second_writer(const char *image) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int rc = second_writer(image);
        fflush(stdout);
        _exit(rc);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int main(void) {
    char dir[] = "/tmp/fpl-demo-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char image[64];
    snprintf(image, sizeof image, "%s/disk.img", dir);
    int fd = open(image, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 || ftruncate(fd, 1 << 20) != 0) {
        perror(image);
        return 1;
    }
    close(fd);
    printf("libfpl %s, image %s\n", fpl_version(), image);

    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire(image, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    if (rc < 0) {
        fprintf(stderr, "fpl_acquire: %s\n", err.message);
        return 1;
    }
    printf("[pid %d] holds the write lock\n", (int)getpid());

    int refused = run_second_writer(image);

    fpl_status st;
    fpl_holder holders[8];
    rc = fpl_query(image, FPL_QUERY_HOLDERS, &st, holders, 8, &err);
    if (rc < 0) {
        fprintf(stderr, "fpl_query: %s\n", err.message);
        return 1;
    }
    char uses[96], refuses[96];
    printf("query: in use by %u process(es); uses %s; does not share %s\n", st.n_holders,
           perm_names(st.perm, uses, sizeof uses), perm_names(st.unshared, refuses, sizeof refuses));
    for (uint32_t i = 0; i < st.n_holders && i < 8; i++)
        printf("  %s (pid %d, fd %d)\n", holders[i].name, holders[i].pid, holders[i].fd);

    fpl_release(lock);
    printf("[pid %d] released\n", (int)getpid());
    int admitted = run_second_writer(image);

    unlink(image);
    rmdir(dir);
    /* The demonstration worked if the writer was refused, then admitted. */
    return refused == 1 && admitted == 0 ? 0 : 1;
}
