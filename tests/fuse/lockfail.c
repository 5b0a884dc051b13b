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
 *               kernel, which keeps them locally (FUSE_CAP_POSIX_LOCKS off).
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
#include <unistd.h>

#define FILE_NAME "disk.img"
#define FILE_PATH "/" FILE_NAME
#define FILE_SIZE (1024 * 1024)

static char data[FILE_SIZE];
static off_t size = FILE_SIZE;
static int lock_error;

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

static int lf_open(const char *path, struct fuse_file_info *fi)
{
    (void)fi;
    return strcmp(path, FILE_PATH) == 0 ? 0 : -ENOENT;
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

int main(int argc, char *argv[])
{
    static struct fuse_operations ops = {
        .getattr = lf_getattr,
        .readdir = lf_readdir,
        .open = lf_open,
        .read = lf_read,
        .write = lf_write,
        .truncate = lf_truncate,
        .fsync = lf_fsync,
    };
    if (argc < 3) {
        fprintf(stderr, "usage: %s enolck|eopnotsupp|einval|local MOUNTPOINT -f [FUSE options]\n",
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
    } else if (strcmp(argv[1], "local") != 0) {
        fprintf(stderr, "lockfail: unknown mode '%s'\n", argv[1]);
        return 2;
    }
    /* fuse_main sees the program name, then the mount point and options. */
    argv[1] = argv[0];
    return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
