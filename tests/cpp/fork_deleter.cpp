// A C++ owner of a libfpl handle (std::unique_ptr with fpl_release as its
// deleter) copied into a forked child by fork(): the child's scope ends,
// its deleter runs fpl_release on the child's copy, and the parent must
// still hold every byte. Prints "child released RC" from the child and
// "parent holds MASK" from the parent (MASK: bit i for byte 100+i, bit 4+i
// for byte 200+i, seen by F_OFD_GETLK from a fresh open file description).
#include <cstdio>
#include <cstdlib>
#include <memory>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fpl.h"

namespace {

struct Release {
    void operator()(fpl_lock *lock) const {
        std::printf("child released %d\n", fpl_release(lock));
        std::fflush(stdout);
    }
};

using Handle = std::unique_ptr<fpl_lock, Release>;

unsigned held(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0xffffffffu;
    unsigned mask = 0;
    const int bytes[] = {100, 101, 102, 103, 200, 201, 202, 203};
    for (int i = 0; i < 8; i++) {
        struct flock fl = {};
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = bytes[i];
        fl.l_len = 1;
        if (fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) mask |= 1u << i;
    }
    close(fd);
    return mask;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    fpl_lock *raw = nullptr;
    fpl_error err;
    if (fpl_acquire(argv[1], FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &raw, &err) != 0) {
        std::printf("acquire failed: %s\n", err.message);
        return 1;
    }
    pid_t pid;
    {
        Handle handle(raw);
        std::fflush(stdout);
        pid = fork();
        if (pid < 0) return 1;
        if (pid > 0) (void)handle.release();  // the parent keeps the raw handle
        // In the child, the scope ends here and the deleter runs.
    }
    if (pid == 0) std::exit(0);
    int status = 0;
    waitpid(pid, &status, 0);
    std::printf("parent holds 0x%x\n", held(argv[1]));
    std::printf("parent released %d\n", fpl_release(raw));
    std::printf("after release 0x%x\n", held(argv[1]));
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
