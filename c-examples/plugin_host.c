/* plugin_host.c: use libfpl as an optional plugin, loaded with dlopen.
 *
 * A program that must run where libfpl is not installed resolves it at run
 * time: dlopen("libfpl.so.1") (the SONAME, so any compatible 1.x library
 * will do), dlsym for each function, dlclose when done. Each cycle here
 * loads the library, locks, inspects and releases an image it made, and
 * unloads it again; under valgrind every cycle must be clean.
 *
 *   cc -std=c11 plugin_host.c $(pkg-config --cflags fpl) -ldl -o plugin_host
 *   ./plugin_host 1000
 */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fpl.h" /* types and constants only: nothing here links libfpl */

struct fpl_api {
    const char *(*fpl_version)(void);
    int (*fpl_acquire)(const char *, uint32_t, uint32_t, uint32_t, fpl_lock **, fpl_error *);
    int (*fpl_acquire_fd)(int, uint32_t, uint32_t, uint32_t, fpl_lock **, fpl_error *);
    int (*fpl_update)(fpl_lock *, uint32_t, uint32_t, uint32_t, fpl_error *);
    int (*fpl_release)(fpl_lock *);
    int (*fpl_check)(const char *, uint32_t, uint32_t, uint32_t, fpl_error *);
    int (*fpl_query)(const char *, uint32_t, fpl_status *, fpl_holder *, size_t, fpl_error *);
    int (*fpl_query_many)(const char *const *, size_t, uint32_t, fpl_status *, int32_t *,
                          fpl_holder *, size_t, size_t *, fpl_error *);
};

/* Looks NAME up into api->NAME. The assignment inside sizeof is never
 * evaluated (libfpl stays unlinked) but makes the compiler check that the
 * table's type matches the declaration in fpl.h. */
#define RESOLVE(api, handle, name)                                      \
    ((void)sizeof((api)->name = name),                                 \
     *(void **)&(api)->name = dlsym((handle), #name), (api)->name != NULL)

static void *load(struct fpl_api *api) {
    void *handle = dlopen("libfpl.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        fprintf(stderr, "%s\n", dlerror());
        return NULL;
    }
    if (RESOLVE(api, handle, fpl_version) && RESOLVE(api, handle, fpl_acquire) &&
        RESOLVE(api, handle, fpl_acquire_fd) && RESOLVE(api, handle, fpl_update) &&
        RESOLVE(api, handle, fpl_release) && RESOLVE(api, handle, fpl_check) &&
        RESOLVE(api, handle, fpl_query) && RESOLVE(api, handle, fpl_query_many))
        return handle;
    fprintf(stderr, "libfpl.so.1 lacks a function: %s\n", dlerror());
    dlclose(handle);
    return NULL;
}

#define EXPECT(cond)                                                        \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
            return 1;                                                       \
        }                                                                   \
    } while (0)

/* One cycle of a plugin's life: load, use every function, unload. */
static int cycle(const char *image) {
    struct fpl_api fpl;
    void *handle = load(&fpl);
    if (!handle) return 1;

    EXPECT(strcmp(fpl.fpl_version(), FPL_VERSION_STRING) == 0);

    fpl_lock *lock;
    fpl_error err;
    EXPECT(fpl.fpl_acquire(image, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &lock, &err) == 0);

    /* A second writer is refused, even in this process (OFD locks). */
    EXPECT(fpl.fpl_check(image, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &err) == -EAGAIN);
    /* The holder is this process. (Under valgrind, the lookup's 1 s budget
     * can run out first: no holder, -1, as fpl.h documents; the test
     * running it under valgrind sets FPL_TEST_UNDER_VALGRIND.) */
    EXPECT(err.byte == 201 &&
           (err.holder_pid == (int32_t)getpid() ||
            (err.holder_pid == -1 && getenv("FPL_TEST_UNDER_VALGRIND") != NULL)));

    fpl_status st;
    fpl_holder holders[2];
    EXPECT(fpl.fpl_query(image, FPL_QUERY_HOLDERS, &st, holders, 2, &err) == 0);
    EXPECT(st.n_holders == 1 && holders[0].pid == (int32_t)getpid());
    EXPECT(st.perm == FPL_MODE_WRITE_PERM);

    /* Several images at once: one walk of /proc, a result for each. */
    const char *paths[] = {image, "/nonexistent/disk.img"};
    fpl_status sts[2];
    int32_t results[2];
    size_t found;
    EXPECT(fpl.fpl_query_many(paths, 2, FPL_QUERY_HOLDERS, sts, results, holders, 2, &found, &err) ==
           -ENOENT);
    EXPECT(results[0] == 0 && results[1] == -ENOENT && found == 1 && sts[0].n_holders == 1);

    EXPECT(fpl.fpl_update(lock, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &err) == 0);
    EXPECT(fpl.fpl_release(lock) == 0);

    int fd = open(image, O_RDONLY | O_CLOEXEC);
    EXPECT(fd >= 0);
    EXPECT(fpl.fpl_acquire_fd(fd, FPL_MODE_EXCLUSIVE_PERM, FPL_MODE_EXCLUSIVE_SHARE, 0, &lock, &err) == 0);
    close(fd); /* the handle keeps its own descriptor */
    EXPECT(fpl.fpl_query(image, 0, &st, NULL, 0, &err) == 0 && st.unshared == FPL_PERM_ALL);
    EXPECT(fpl.fpl_release(lock) == 0);
    EXPECT(fpl.fpl_query(image, 0, &st, NULL, 0, &err) == 0 && st.perm == 0 && st.unshared == 0);

    EXPECT(fpl.fpl_acquire("/nonexistent/disk.img", FPL_MODE_READ_PERM, FPL_MODE_READ_SHARE, 0,
                           &lock, &err) == -ENOENT);
    EXPECT(err.code == -ENOENT && err.message[0] != '\0');

    EXPECT(dlclose(handle) == 0);
    return 0;
}

int main(int argc, char **argv) {
    long cycles = argc > 1 ? strtol(argv[1], NULL, 10) : 1;
    char dir[] = "/tmp/fpl-plugin-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char image[64];
    snprintf(image, sizeof image, "%s/disk.img", dir);
    int fd = open(image, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        perror(image);
        return 1;
    }
    close(fd);

    int failed = 0;
    long done = 0;
    while (done < cycles && !failed) {
        failed = cycle(image);
        done += !failed;
    }
    /* Was the library really unloaded by the last dlclose? */
    void *still = dlopen("libfpl.so.1", RTLD_NOW | RTLD_NOLOAD);
    printf("%ld of %ld cycles passed; libfpl.so.1 %s after dlclose\n", done, cycles,
           still ? "still loaded" : "unloaded");
    if (still) dlclose(still);

    unlink(image);
    rmdir(dir);
    return failed;
}
