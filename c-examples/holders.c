/* holders.c: who holds a disk image?
 *
 * For each IMAGE, prints which of QEMU's lock bytes are held and the
 * processes holding them, like `lsof` for QEMU's locks.
 *
 *   cc -std=c11 holders.c $(pkg-config --cflags --libs fpl) -o holders
 *   ./holders vm.qcow2
 */
#include <stdio.h>
#include <stdlib.h>

#include "fpl.h"

static void print_perms(const char *label, uint32_t bits) {
    static const char *names[] = {"consistent read", "write", "write unchanged", "resize"};
    printf("%s", label);
    if (!bits) printf(" nothing");
    for (int i = 0; i < 4; i++)
        if (bits & (1u << i)) printf(" [%s]", names[i]);
}

/* Queries IMAGE, growing the array until every holder found fits (holders
 * can come and go between two calls). Each call walks /proc, so start with
 * room for 16: a process holds an image through one descriptor (QEMU, fpl
 * hold), so one walk is enough unless more than 16 processes hold it. */
static int show(const char *image) {
    fpl_status st;
    fpl_error err;
    size_t cap = 16;
    fpl_holder *holders = malloc(cap * sizeof *holders);
    if (!holders) {
        perror("malloc");
        return 1;
    }
    for (;;) {
        int rc = fpl_query(image, FPL_QUERY_HOLDERS, &st, holders, cap, &err);
        if (rc < 0) {
            fprintf(stderr, "%s: %s\n", image, err.message);
            free(holders);
            return 1;
        }
        if (st.n_holders <= cap) break;
        cap = st.n_holders + 4;
        fpl_holder *grown = realloc(holders, cap * sizeof *holders);
        if (!grown) {
            perror("realloc");
            free(holders);
            return 1;
        }
        holders = grown;
    }

    if (!st.perm && !st.unshared && !(st.flags & (FPL_STATUS_LEGACY | FPL_STATUS_LIBVIRT))) {
        printf("%s: not locked\n", image);
    } else {
        printf("%s:", image);
        print_perms(" uses", st.perm);
        print_perms("; does not share", st.unshared);
        printf("\n");
        if (st.flags & FPL_STATUS_LEGACY) printf("  a QEMU <= 6.2 holds it (bytes 104/204)\n");
        if (st.flags & FPL_STATUS_LIBVIRT) printf("  libvirt's virtlockd holds it (byte 0)\n");
    }
    for (uint32_t i = 0; i < st.n_holders; i++) {
        const fpl_holder *h = &holders[i];
        printf("  held by %s, pid %d, fd %d:", h->name[0] ? h->name : "?", h->pid, h->fd);
        print_perms(" uses", h->perm);
        print_perms("; does not share", h->unshared);
        printf("\n");
    }
    /* Held bytes with nobody found is never "free": the holder is on another
     * host (NFS, CephFS), in another PID namespace, or another user's. */
    if (st.n_holders == 0 && (st.perm || st.unshared))
        printf("  held by a process this host cannot see\n");
    if (st.flags & FPL_STATUS_HOLDERS_PARTIAL)
        printf("  (some processes could not be inspected: more holders may exist)\n");
    free(holders);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s IMAGE...\n", argv[0]);
        return 2;
    }
    int status = 0;
    for (int i = 1; i < argc; i++) status |= show(argv[i]);
    return status;
}
