/* hold.c: hold QEMU's write lock on an image while a command runs.
 *
 * Like flock(1) for disk images: a VM (or any libfpl user) is refused the
 * image until COMMAND exits, and COMMAND is not started while a VM uses it.
 * Exits with COMMAND's status, or 75 (EX_TEMPFAIL) if the image is in use.
 *
 *   cc -std=c11 hold.c $(pkg-config --cflags --libs fpl) -o hold
 *   ./hold vm.qcow2 cp vm.qcow2 backup.qcow2
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fpl.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s IMAGE COMMAND [ARG]...\n", argv[0]);
        return 2;
    }
    const char *image = argv[1];

    fpl_lock *lock;
    fpl_error err;
    int rc = fpl_acquire(image, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err);
    if (rc == -EAGAIN) {
        fprintf(stderr, "%s\n", err.message); /* QEMU's words, the holder named */
        return 75;
    }
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", image, err.message);
        return 1;
    }

    /* The lock's descriptor is close-on-exec: the command does not inherit
     * it, so the lock ends when we release it, not when the command's
     * children exit. */
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        fpl_release(lock);
        return 1;
    }
    if (pid == 0) {
        execvp(argv[2], &argv[2]);
        perror(argv[2]);
        _exit(127);
    }
    int status;
    pid_t waited;
    do
        waited = waitpid(pid, &status, 0);
    while (waited < 0 && errno == EINTR);
    fpl_release(lock);
    if (waited < 0) {
        perror("waitpid");
        return 1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
