/* pnp-devices: the devices of one subsystem present now, then every change to them, from
 * pnpbroker over D-Bus, in C with sd-bus (libsystemd). Any user may run it.
 *
 *   cc -o pnp-devices pnp-devices.c $(pkg-config --cflags --libs libsystemd)
 *   ./pnp-devices usb        # USB devices and interfaces, then changes (Ctrl-C to stop)
 *   ./pnp-devices net 3      # network interfaces, then stop after 3 changes
 *
 * The order is what makes it race-free: the match rule first, then GetDevices (the devices,
 * and the sequence of the last event folded into the broker's table), then only the Event
 * signals with a higher sequence. Signals that arrive during the GetDevices call wait in
 * sd-bus's queue until the loop below dispatches them, so none is lost and none is counted
 * twice. DBUS_SYSTEM_BUS_ADDRESS is honoured.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>

#define BROKER "org.pnp.Broker"
#define PATH "/org/pnp/Broker"
#define INTERFACE "org.pnp.Broker1"
#define RULE                                                                                 \
    "type='signal',sender='" BROKER "',path='" PATH "',interface='" INTERFACE "',member='Event'"

static uint64_t table_sequence;
static long changes_left = -1; /* -1: run until stopped */
static const char *wanted;      /* the subsystem */

/* One device row, (ssa{ss}): print its devpath and its DEVNAME or INTERFACE if it has one. */
static int print_device(sd_bus_message *reply) {
    const char *devpath, *subsystem, *key, *value, *name = "";
    int r = sd_bus_message_read(reply, "ss", &devpath, &subsystem);
    if (r < 0)
        return r;
    r = sd_bus_message_enter_container(reply, 'a', "{ss}");
    if (r < 0)
        return r;
    while ((r = sd_bus_message_read(reply, "{ss}", &key, &value)) > 0)
        if (strcmp(key, "DEVNAME") == 0 || strcmp(key, "INTERFACE") == 0)
            name = value;
    if (r < 0)
        return r;
    printf("present %s (%s) %s\n", devpath, subsystem, name);
    return sd_bus_message_exit_container(reply);
}

static int list_devices(sd_bus *bus, const char *subsystem) {
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message *call = NULL, *reply = NULL;
    int r = sd_bus_message_new_method_call(bus, &call, BROKER, PATH, INTERFACE, "GetDevices");
    if (r >= 0) /* the filter, a{sv}: {"subsystem": <["SUBSYSTEM"]>} */
        r = sd_bus_message_append(call, "a{sv}", 1, "subsystem", "as", 1, subsystem);
    if (r >= 0)
        r = sd_bus_call(bus, call, 0, &error, &reply);
    if (r < 0) {
        fprintf(stderr, "pnp-devices: GetDevices: %s\n",
                error.message ? error.message : strerror(-r));
        goto done;
    }
    r = sd_bus_message_read(reply, "t", &table_sequence);
    if (r >= 0)
        r = sd_bus_message_enter_container(reply, 'a', "(ssa{ss})");
    while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'r', "ssa{ss}")) > 0) {
        r = print_device(reply);
        if (r >= 0)
            r = sd_bus_message_exit_container(reply);
    }
    printf("sequence %" PRIu64 "\n", table_sequence);
    fflush(stdout);
done:
    sd_bus_error_free(&error);
    sd_bus_message_unref(call);
    sd_bus_message_unref(reply);
    return r;
}

/* Event(t sequence, s action, s subsystem, s devpath, a{ss} properties, a{sv} handler) */
static int on_event(sd_bus_message *m, void *userdata, sd_bus_error *error) {
    uint64_t sequence;
    const char *action, *subsystem, *devpath;
    (void)userdata, (void)error;
    if (sd_bus_message_read(m, "tsss", &sequence, &action, &subsystem, &devpath) < 0)
        return 0;
    if (sequence <= table_sequence)
        return 0; /* already in the table GetDevices returned */
    if (strcmp(subsystem, wanted) != 0)
        return 0;
    printf("%" PRIu64 " %s %s (%s)\n", sequence, action, devpath, subsystem);
    fflush(stdout);
    if (changes_left > 0)
        changes_left--;
    return 0;
}

int main(int argc, char *argv[]) {
    sd_bus *bus = NULL;
    int r;
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s SUBSYSTEM [CHANGES]\n", argv[0]);
        return 100;
    }
    wanted = argv[1];
    if (argc == 3)
        changes_left = strtol(argv[2], NULL, 10);
    r = sd_bus_open_system(&bus);
    if (r < 0) {
        fprintf(stderr, "pnp-devices: system bus: %s\n", strerror(-r));
        return 111;
    }
    /* The bus daemon could filter on the subsystem (arg2='net'), but sd-bus then refuses the
     * signal locally (it does not match argN past the leading uint64): on_event compares. */
    r = sd_bus_add_match(bus, NULL, RULE, on_event, NULL); /* waits for the daemon's reply */
    if (r >= 0)
        r = list_devices(bus, argv[1]);
    while (r >= 0 && changes_left != 0) {
        r = sd_bus_process(bus, NULL);
        if (r == 0)
            r = sd_bus_wait(bus, UINT64_MAX);
    }
    if (r < 0)
        fprintf(stderr, "pnp-devices: %s\n", strerror(-r));
    sd_bus_flush_close_unref(bus);
    return r < 0 ? 1 : 0;
}
