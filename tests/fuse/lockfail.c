/*
 * lockfail: a tiny FUSE file system (libfuse3, high-level API) with one
 * regular file, /disk.img (1 MiB, kept in memory, readable and writable),
 * for tests/filesystems.rs.
 *
 *     lockfail MODE MOUNTPOINT -f [-s] [FUSE options]
 *
 * MODE says what byte-range locks (fcntl F_SETLK / F_GETLK, OFD or POSIX)
 * on the file do:
 *   enolck      the file system's lock operation fails with ENOLCK, like a
 *               network file system whose lock service is down;
 *   eopnotsupp  it fails with EOPNOTSUPP;
 *   einval      it fails with EINVAL: the answer a kernel without OFD locks
 *               gives, so a library that decided "no OFD locks" from a lock
 *               call on this file would wrongly decide it for every file;
 *   local       no lock operation at all: libfuse then leaves locks to the
 *               kernel, which keeps them locally (FUSE_CAP_POSIX_LOCKS off);
 *   slowflush   locks as local, but flush (every close() of the file) first
 *               creates $LOCKFAIL_CONTROL/flushing, then blocks until
 *               $LOCKFAIL_CONTROL/go exists (a folder outside the mount);
 *   slow        open sleeps 50 ms, F_SETLK 20 ms and F_GETLK 10 ms, then
 *               they succeed (libfuse's own lock table, keyed by owner,
 *               answers GETLK and remembers what SETLK took). Interrupted
 *               (slow sets fuse_config.intr; mount without -s), every other one fails
 *               with EINTR, logging "interrupted", which the kernel returns
 *               to the caller (for F_SETLK as ERESTARTSYS: EINTR unless the
 *               signal's handler has SA_RESTART); the others ignore the
 *               interruption and finish, so that a caller interrupted more
 *               often than a call lasts still gets through;
 *   unlockeio   the lock operation succeeds for F_RDLCK/F_WRLCK (libfuse's
 *               table remembers them and answers GETLK from them) and fails
 *               with EIO for every F_UNLCK, so nothing can be unlocked.
 *
 * With a lock operation libfuse asks the kernel for FUSE_CAP_POSIX_LOCKS,
 * and the kernel (fs/fuse/file.c, fuse_file_lock) then sends every
 * F_SETLK/F_GETLK, OFD ones included, to the file system as
 * FUSE_SETLK/FUSE_GETLK and returns its error to the caller.
 */

#define FUSE_USE_VERSION 31

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <limits.h>
#include <signal.h>
#include <unistd.h>

#define FILE_NAME "disk.img"
#define FILE_PATH "/" FILE_NAME
#define FILE_SIZE (1024 * 1024)

static char data[FILE_SIZE];
static off_t size = FILE_SIZE;
static int lock_error;
static const char *control; /* slowflush: the folder of the flushing / go files */
static int slow;            /* slow: open and lock sleep, then succeed */

static int lf_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    (void)fi;
    memset(st, 0, sizeof(*st));
    st->st_uid = getuid();
    st->st_gid = getgid();
    if (strcmp(path, "/") == 0) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
        return 0;
    }
    if (strcmp(path, FILE_PATH) == 0) {
        st->st_mode = S_IFREG | 0644;
        st->st_nlink = 1;
        st->st_size = size;
        st->st_blocks = (size + 511) / 512;
        return 0;
    }
    return -ENOENT;
}

static int lf_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)off;
    (void)fi;
    (void)flags;
    if (strcmp(path, "/") != 0)
        return -ENOENT;
    fill(buf, ".", NULL, 0, 0);
    fill(buf, "..", NULL, 0, 0);
    fill(buf, FILE_NAME, NULL, 0, 0);
    return 0;
}

/* Sleeps MS milliseconds; -EINTR if libfuse interrupted the request meanwhile
 * (with -o intr it signals the thread serving it, which ends nanosleep). */
static unsigned interruptions;

/* Whether this interruption fails the request: every other one does. */
static int honour_interruption(void)
{
    if (__atomic_fetch_add(&interruptions, 1, __ATOMIC_RELAXED) % 2 == 0) {
        fprintf(stderr, "lockfail: interrupted\n");
        return 1;
    }
    return 0;
}

static int nap(int ms)
{
    struct timespec left = {ms / 1000, (long)(ms % 1000) * 1000000L};
    int ignore = 0;
    while (nanosleep(&left, &left) != 0) {
        if (errno != EINTR)
            return -errno;
        if (!ignore && fuse_interrupted()) {
            if (honour_interruption())
                return -EINTR;
            ignore = 1;
        }
    }
    if (!ignore && fuse_interrupted() && honour_interruption())
        return -EINTR;
    return 0;
}

static int lf_open(const char *path, struct fuse_file_info *fi)
{
    (void)fi;
    if (strcmp(path, FILE_PATH) != 0)
        return -ENOENT;
    return slow ? nap(50) : 0;
}

static void on_intr_signal(int sig)
{
    (void)sig;
}

/* Interrupts reach the file system (libfuse signals the thread serving the
 * request, ending its nanosleep) only with fuse_config.intr. libfuse 3.14
 * takes no -o intr from the command line, so init sets it; the signal's
 * handler, which fuse_new installs only for a command-line intr, is main's. */
static void *lf_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    (void)conn;
    if (slow) {
        cfg->intr = 1;
        cfg->intr_signal = SIGUSR1;
    }
    return NULL;
}

static int lf_flush(const char *path, struct fuse_file_info *fi)
{
    char flushing[PATH_MAX], go[PATH_MAX];
    FILE *f;
    (void)path;
    (void)fi;
    if (!control)
        return 0;
    snprintf(flushing, sizeof(flushing), "%s/flushing", control);
    snprintf(go, sizeof(go), "%s/go", control);
    f = fopen(flushing, "w");
    if (f)
        fclose(f);
    fprintf(stderr, "lockfail: flush waits for %s\n", go);
    while (access(go, F_OK) != 0) {
        struct timespec pause = {0, 10 * 1000000L};
        nanosleep(&pause, NULL);
    }
    fprintf(stderr, "lockfail: flush done\n");
    return 0;
}

static int lf_read(const char *path, char *buf, size_t len, off_t off,
                   struct fuse_file_info *fi)
{
    (void)path;
    (void)fi;
    if (off >= size)
        return 0;
    if ((off_t)len > size - off)
        len = (size_t)(size - off);
    memcpy(buf, data + off, len);
    return (int)len;
}

static int lf_write(const char *path, const char *buf, size_t len, off_t off,
                    struct fuse_file_info *fi)
{
    (void)path;
    (void)fi;
    if (off >= FILE_SIZE || (off_t)len > FILE_SIZE - off)
        return -EFBIG;
    memcpy(data + off, buf, len);
    if (off + (off_t)len > size)
        size = off + (off_t)len;
    return (int)len;
}

static int lf_truncate(const char *path, off_t len, struct fuse_file_info *fi)
{
    (void)path;
    (void)fi;
    if (len < 0 || len > FILE_SIZE)
        return -EFBIG;
    if (len > size)
        memset(data + size, 0, (size_t)(len - size));
    size = len;
    return 0;
}

static int lf_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    (void)path;
    (void)datasync;
    (void)fi;
    return 0;
}

static int lf_lock(const char *path, struct fuse_file_info *fi, int cmd, struct flock *fl)
{
    (void)fi;
    fprintf(stderr, "lockfail: lock %s cmd %d type %d start %lld len %lld -> %s\n", path,
            cmd, fl->l_type, (long long)fl->l_start, (long long)fl->l_len,
            strerror(lock_error));
    return -lock_error;
}

/* Locks kept by libfuse's high-level lock table (fuse.c: fuse_lib_setlk
 * inserts what the file system granted, fuse_lib_getlk answers from it
 * first), so GETLK here only runs when the table has no conflict. */
static int lf_lock_table(const char *path, struct fuse_file_info *fi, int cmd,
                         struct flock *fl)
{
    (void)path;
    (void)fi;
    if (cmd == F_GETLK) {
        int rc = slow ? nap(10) : 0;
        if (rc == 0)
            fl->l_type = F_UNLCK;
        return rc;
    }
    if (slow)
        return nap(20);
    if (fl->l_type == F_UNLCK) {
        fprintf(stderr, "lockfail: unlock start %lld len %lld -> EIO\n",
                (long long)fl->l_start, (long long)fl->l_len);
        return -EIO;
    }
    return 0;
}

int main(int argc, char *argv[])
{
    static struct fuse_operations ops = {
        .init = lf_init,
        .getattr = lf_getattr,
        .readdir = lf_readdir,
        .open = lf_open,
        .read = lf_read,
        .write = lf_write,
        .truncate = lf_truncate,
        .fsync = lf_fsync,
    };
    if (argc < 3) {
        fprintf(stderr, "usage: %s enolck|eopnotsupp|einval|local|slowflush|slow|unlockeio MOUNTPOINT -f [FUSE options]\n",
                argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "enolck") == 0) {
        lock_error = ENOLCK;
        ops.lock = lf_lock;
    } else if (strcmp(argv[1], "eopnotsupp") == 0) {
        lock_error = EOPNOTSUPP;
        ops.lock = lf_lock;
    } else if (strcmp(argv[1], "einval") == 0) {
        lock_error = EINVAL;
        ops.lock = lf_lock;
    } else if (strcmp(argv[1], "slowflush") == 0) {
        control = getenv("LOCKFAIL_CONTROL");
        if (!control) {
            fprintf(stderr, "lockfail: slowflush needs LOCKFAIL_CONTROL (a folder)\n");
            return 2;
        }
        ops.flush = lf_flush;
    } else if (strcmp(argv[1], "slow") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_intr_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGUSR1, &sa, NULL);
        slow = 1;
        ops.lock = lf_lock_table;
    } else if (strcmp(argv[1], "unlockeio") == 0) {
        ops.lock = lf_lock_table;
    } else if (strcmp(argv[1], "local") != 0) {
        fprintf(stderr, "lockfail: unknown mode '%s'\n", argv[1]);
        return 2;
    }
    /* fuse_main sees the program name, then the mount point and options. */
    argv[1] = argv[0];
    return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
