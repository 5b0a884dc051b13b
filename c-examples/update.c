/* update.c: read an image, upgrade to writing it, then downgrade again.
 *
 * Reads while sharing everything (like `qemu-img info -U`), asks for QEMU's
 * write lock only for the moment it writes, and goes back to reading. When
 * somebody else uses the image the upgrade is refused and the read lock
 * stays exactly as it was.
 *
 *   cc -std=c11 update.c $(pkg-config --cflags --libs fpl) -o update
 *   ./update vm.qcow2
 */
#include <errno.h>
#include <stdio.h>

#include "fpl.h"

/* Prints the lock bytes held on IMAGE (by anybody: here, by us). */
static void show(const char *step, const char *image) {
    fpl_status st;
    fpl_error err;
    if (fpl_query(image, 0, &st, NULL, 0, &err) < 0) {
        printf("%s: %s\n", step, err.message);
        return;
    }
    printf("%s: bytes", step);
    for (int i = 0; i < 4; i++)
        if (st.perm & (1u << i)) printf(" %d", 100 + i);
    for (int i = 0; i < 4; i++)
        if (st.unshared & (1u << i)) printf(" %d", 200 + i);
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
        return 2;
    }
    const char *image = argv[1];
    fpl_lock *lock;
    fpl_error err;

    if (fpl_acquire(image, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &lock,
                    &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    show("read-shared", image);

    int rc = fpl_update(lock, FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE, 0, &err);
    if (rc == 0) {
        show("write", image);
        /* ... write the image ... */
        rc = fpl_update(lock, FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE, 0, &err);
        if (rc < 0) fprintf(stderr, "downgrade: %s\n", err.message); /* loosening never conflicts */
        show("read-shared again", image);
    } else {
        /* Refused: the lock is left exactly as it was. */
        fprintf(stderr, "%s\n", err.message);
        show("still read-shared", image);
    }
    fpl_release(lock);
    return rc == 0 ? 0 : rc == -EAGAIN ? 75 : 1;
}
