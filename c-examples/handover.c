/* handover.c: one side of a live migration's hand-over of an image, the way
 * QEMU does it, but with no moment where nobody protects the image.
 *
 * Source and destination each run this program on the same image (the whole
 * backing chain: FPL_FLAG_CHAIN) and are told the steps on stdin, one per
 * line, as a hypervisor's migration channel would tell them:
 *
 *   active     use the image as a VM disk does (write preset)
 *   incoming   open it reading and sharing everything (100 on every file)
 *   protect    read and refuse writers (100, 201, 202, 203 on every file):
 *              both sides can hold this at once
 *   inactive   read and share everything again (100 on every file)
 *   release    release every file
 *
 * Each step answers one line on stdout: "ok STEP", or "refused ERRNO MESSAGE"
 * (the message on one line), after which this side holds exactly what it held
 * before the step. The hand-over, with 201 and 203 always held by somebody:
 *
 *   source: active        destination: -
 *   destination: incoming
 *   source: protect       (loosening: never refused)
 *   destination: protect  (refused while the source still writes)
 *   source: inactive      (loosening: never refused)
 *   destination: active   (refused while anybody else refuses writers)
 *   source: release
 *
 * On a refused "active", the destination goes back with "inactive" (or
 * "release") and the source takes the image back with "protect", "active".
 *
 *   cc -std=c11 handover.c $(pkg-config --cflags --libs fpl) -o handover
 *   ./handover vm.qcow2 < steps
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "fpl.h"

/* Read, refuse write and resize, share write-unchanged as a VM does. */
#define PROTECT_PERM  FPL_PERM_CONSISTENT_READ
#define PROTECT_SHARE (FPL_PERM_CONSISTENT_READ | FPL_PERM_WRITE_UNCHANGED)

struct step {
    const char *name;
    uint32_t perm, shared;
};

static const struct step steps[] = {
    {"active", FPL_MODE_WRITE_PERM, FPL_MODE_WRITE_SHARE},
    {"incoming", FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE},
    {"protect", PROTECT_PERM, PROTECT_SHARE},
    {"inactive", FPL_MODE_READ_SHARED_PERM, FPL_MODE_READ_SHARED_SHARE},
};

/* Takes the step's locks: a first step acquires, later ones update (prepare,
 * then commit on every file, or abort on every file). */
static int take(const char *image, fpl_lock **lock, const struct step *s, fpl_error *err) {
    if (*lock == NULL)
        return fpl_acquire(image, s->perm, s->shared, FPL_FLAG_CHAIN, lock, err);
    return fpl_update(*lock, s->perm, s->shared, FPL_FLAG_CHAIN, err);
}

static void refused(int rc, const char *message) {
    printf("refused %d ", rc);
    for (const char *c = message; *c; c++) putchar(*c == '\n' ? '|' : *c);
    putchar('\n');
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s IMAGE < steps\n", argv[0]);
        return 2;
    }
    const char *image = argv[1];
    fpl_lock *lock = NULL;
    char line[64];

    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '\0') continue;
        if (strcmp(line, "release") == 0) {
            int rc = fpl_release(lock);
            lock = NULL;
            if (rc < 0) refused(rc, "release failed");
            else printf("ok release\n");
            fflush(stdout);
            continue;
        }
        const struct step *s = NULL;
        for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
            if (strcmp(line, steps[i].name) == 0) s = &steps[i];
        fpl_error err;
        if (s == NULL) {
            refused(-EINVAL, "unknown step");
        } else if (take(image, &lock, s, &err) < 0) {
            refused(err.code, err.message);
        } else {
            printf("ok %s\n", s->name);
        }
        fflush(stdout);
    }
    fpl_release(lock);
    return 0;
}
