/* An LD_PRELOAD shim that puts faults into fcntl(2) for libfpl's
 * reliability tests. It changes nothing unless asked by environment:
 *
 *   FPL_SHIM_NO_OFD=1        F_OFD_* fail with EINVAL, as on a kernel older
 *                            than 3.15 (no open file description locks);
 *   FPL_SHIM_STOP_AT_TEST=1  the first conflict test on a protocol byte
 *                            (F_*GETLK asking F_WRLCK at 100 or above)
 *                            stops the process with SIGSTOP first, so a
 *                            test can look at it between lock and test and
 *                            kill it there. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

typedef int (*fcntl_fn)(int, int, ...);

static int shim(fcntl_fn real, int fd, int cmd, void *arg) {
    int ofd = cmd == F_OFD_SETLK || cmd == F_OFD_SETLKW || cmd == F_OFD_GETLK;
    if (ofd && getenv("FPL_SHIM_NO_OFD")) {
        errno = EINVAL;
        return -1;
    }
    if ((cmd == F_OFD_GETLK || cmd == F_GETLK) && getenv("FPL_SHIM_STOP_AT_TEST")) {
        struct flock *fl = arg;
        if (fl->l_type == F_WRLCK && fl->l_start >= 100) {
            unsetenv("FPL_SHIM_STOP_AT_TEST");
            raise(SIGSTOP);
        }
    }
    return real(fd, cmd, arg);
}

int fcntl(int fd, int cmd, ...) {
    static fcntl_fn real;
    if (!real) *(void **)&real = dlsym(RTLD_NEXT, "fcntl");
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return shim(real, fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...) {
    static fcntl_fn real;
    if (!real) *(void **)&real = dlsym(RTLD_NEXT, "fcntl64");
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return shim(real, fd, cmd, arg);
}
