/* The storm's legacy program: sleeps 5 ms (nanosleep, restarted on EINTR) and exits 0. */
#include <errno.h>
#include <time.h>

int main(void) {
    struct timespec left = {0, 5 * 1000 * 1000};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
    return 0;
}
