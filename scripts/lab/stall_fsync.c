/* A disk that stalls on demand, for tests: preloaded into a daemon (LD_PRELOAD), every fsync and
 * fdatasync waits while the file named by STALL_FSYNC_WHILE exists, then goes on. A spool fsync
 * stuck on a slow or failing disk looks exactly like this to the process. Built by
 * scripts/lab/disk.py (fsync_stall_library) with the machine's C compiler. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

static void hold(void) {
    const char *flag = getenv("STALL_FSYNC_WHILE");
    while (flag != NULL && access(flag, F_OK) == 0)
        usleep(20000);
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    hold();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    hold();
    return real(fd);
}
