/*
 * fpl-holder: a second process for tests/filesystems.rs, using libfpl
 * through its C ABI (include/fpl.h). Its executable is named fpl-holder, so
 * /proc/PID/comm, and the holder name libfpl reports, is "fpl-holder".
 *
 *   fpl-holder hold write|exclusive PATH
 *       Takes the preset on PATH, prints "held", keeps it until its standard
 *       input closes, releases it and prints "released". On failure prints
 *       "error", the code and the message, and exits 1.
 *
 *   fpl-holder first PATH...
 *       In a fresh process (nothing probed or cached yet), for each PATH in
 *       order: fpl_check then fpl_acquire of the write preset, one line
 *       each: "check|acquire", PATH, the return code, the message. Handles
 *       are kept until all paths are done, so a path given twice shows
 *       whether two handles of one process conflict (OFD locks do).
 *
 * Every field is separated by a tab; newlines in messages are written "\n".
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fpl.h"

static void print_message(const char *msg)
{
    for (; *msg; msg++) {
        if (*msg == '\n')
            fputs("\\n", stdout);
        else
            putchar(*msg);
    }
}

static void report(const char *what, const char *path, int rc, const fpl_error *err)
{
    printf("%s\t%s\t%d\t", what, path, rc);
    print_message(err->message);
    putchar('\n');
    fflush(stdout);
}

static int hold(const char *mode, const char *path)
{
    uint32_t perm, shared;
    if (strcmp(mode, "write") == 0) {
        perm = FPL_MODE_WRITE_PERM;
        shared = FPL_MODE_WRITE_SHARE;
    } else if (strcmp(mode, "exclusive") == 0) {
        perm = FPL_MODE_EXCLUSIVE_PERM;
        shared = FPL_MODE_EXCLUSIVE_SHARE;
    } else {
        fprintf(stderr, "fpl-holder: unknown mode '%s'\n", mode);
        return 2;
    }
    fpl_lock *lock = NULL;
    fpl_error err;
    int rc = fpl_acquire(path, perm, shared, 0, &lock, &err);
    if (rc != 0) {
        report("error", path, rc, &err);
        return 1;
    }
    puts("held");
    fflush(stdout);
    while (getchar() != EOF) {
    }
    rc = fpl_release(lock);
    if (rc != 0) {
        printf("error\t%s\t%d\tfpl_release failed\n", path, rc);
        return 1;
    }
    puts("released");
    return 0;
}

static int first(int n, char **paths)
{
    fpl_lock **locks = calloc((size_t)n, sizeof(*locks));
    if (locks == NULL)
        return 1;
    for (int i = 0; i < n; i++) {
        fpl_error err;
        int rc = fpl_check(paths[i], FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &err);
        report("check", paths[i], rc, &err);
        rc = fpl_acquire(paths[i], FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &locks[i],
                         &err);
        report("acquire", paths[i], rc, &err);
    }
    for (int i = 0; i < n; i++)
        fpl_release(locks[i]);
    free(locks);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "hold") == 0)
        return hold(argv[2], argv[3]);
    if (argc >= 3 && strcmp(argv[1], "first") == 0)
        return first(argc - 2, argv + 2);
    fprintf(stderr, "usage: fpl-holder hold write|exclusive PATH | first PATH...\n");
    return 2;
}
