/* The fastest emitter of the broker's Event signals we can build here, for context beside the
 * dbus-fast ceiling: C with sd-bus. Usage: emit_sdbus ADDRESS BODIES
 *
 * BODIES has one event a line, tab-separated: sequence, action, subsystem, devpath, then
 * KEY=VALUE per property (bench/ceiling.py writes it). All of it is read first; then each line
 * goes out as org.pnp.Broker1.Event (tsssa{ss}a{sv}, the handler empty) on /org/pnp/Broker with
 * sd_bus_send: sd-bus writes at once while the socket takes it and queues the rest; when more
 * than QUEUED messages wait, sd_bus_flush waits for the socket (EAGAIN is "wait"). No round
 * trips. Prints {"start": T, "end": T} (CLOCK_MONOTONIC, seconds) as the Python emitter does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <systemd/sd-bus.h>

#define QUEUED 64

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc(n + 1);
    if (!data || fread(data, 1, n, f) != (size_t)n) { fclose(f); free(data); return NULL; }
    data[n] = 0;
    fclose(f);
    *size = n;
    return data;
}

static int check(int r, const char *what) {
    if (r < 0) {
        fprintf(stderr, "emit_sdbus: %s: %s\n", what, strerror(-r));
        exit(1);
    }
    return r;
}

/* One line (NUL-terminated, fields split at tabs in place) as one Event signal. */
static void emit(sd_bus *bus, char *line) {
    char *field[4];
    for (int i = 0; i < 4; i++) field[i] = strsep(&line, "\t");
    if (!field[3]) { fprintf(stderr, "emit_sdbus: short line\n"); exit(1); }
    sd_bus_message *m = NULL;
    check(sd_bus_message_new_signal(bus, &m, "/org/pnp/Broker", "org.pnp.Broker1", "Event"),
          "new signal");
    check(sd_bus_message_append(m, "tsss", strtoull(field[0], NULL, 10), field[1], field[2],
                                field[3]), "append");
    check(sd_bus_message_open_container(m, 'a', "{ss}"), "open a{ss}");
    char *prop;
    while ((prop = strsep(&line, "\t"))) {
        char *value = strchr(prop, '=');
        if (!value) continue;
        *value++ = 0;
        check(sd_bus_message_append(m, "{ss}", prop, value), "append {ss}");
    }
    check(sd_bus_message_close_container(m), "close a{ss}");
    check(sd_bus_message_open_container(m, 'a', "{sv}"), "open a{sv}");
    check(sd_bus_message_close_container(m), "close a{sv}");
    check(sd_bus_send(bus, m, NULL), "send");
    sd_bus_message_unref(m);
    uint64_t queued = 0;
    check(sd_bus_get_n_queued_write(bus, &queued), "queued");
    if (queued > QUEUED) check(sd_bus_flush(bus), "flush");
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: emit_sdbus ADDRESS BODIES\n"); return 100; }
    size_t size;
    char *data = slurp(argv[2], &size);
    if (!data) { perror(argv[2]); return 1; }
    sd_bus *bus = NULL;
    check(sd_bus_new(&bus), "new");
    check(sd_bus_set_address(bus, argv[1]), "address");
    check(sd_bus_set_bus_client(bus, 1), "bus client");
    check(sd_bus_start(bus), "start");
    char *rest = data, *line;
    double start = now();
    while ((line = strsep(&rest, "\n")) && *line) emit(bus, line);
    check(sd_bus_flush(bus), "flush");
    double end = now();
    printf("{\"start\": %.6f, \"end\": %.6f}\n", start, end);
    sd_bus_flush_close_unref(bus);
    free(data);
    return 0;
}
