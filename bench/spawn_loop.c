/* The spawn limit in C, for context: posix_spawn + waitpid of argv[2..] in a loop, COUNT times,
 * with the uevent-like environment read from the process's own environment (the caller sets it).
 * Prints spawns per second. Usage: spawn_loop COUNT PROGRAM [ARG...] */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 3) return 100;
    long count = atol(argv[1]);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < count; i++) {
        pid_t pid;
        int status;
        if (posix_spawn(&pid, argv[2], &fa, NULL, argv + 2, environ) != 0) return 111;
        if (waitpid(pid, &status, 0) < 0) return 111;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    printf("%.1f\n", count / s);
    return 0;
}
