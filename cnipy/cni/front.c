/*
 * cnipy CNI front: the executable a container runtime runs for a cnipy plugin.
 *
 * It forwards the call (CNI_* and CNIPY_* variables, stdin) to the cnipy node daemon over a unix socket and
 * relays the daemon's stdout, stderr and exit code (frames: cnipy/cni/wire.py). When no daemon answers it
 * execs the Python plugin (.venv/bin/python3 -I -S cnipy/cni/launch.py NAME) with the same environment and
 * stdin, so a call behaves the same either way, only slower.
 *
 * What happens when the daemon fails during a call:
 *   - before the daemon acknowledged the request (the reply's first bytes are sent when the call starts):
 *     nothing ran, so the Python plugin runs the call;
 *   - after the acknowledgement: DEL, CHECK, GC, STATUS and VERSION are safe to repeat and run again in Python;
 *     an ADD may have been half done, so the front reports CNI error 11 (try again later); the runtime then
 *     DELs the attachment and retries, as it does after any failed ADD;
 *   - no reply within CNIPY_FRONT_TIMEOUT seconds (default 180): error 11, never an endless wait.
 *
 * Built by cnipy/cni/build_front.py (gcc -O2), once per plugin with -DCNIPY_PLUGIN=NAME, or without it (then
 * the plugin name is argv[1]). No shell is involved anywhere.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef CNIPY_ROOT
#error "build with -DCNIPY_ROOT=\"/path/to/checkout\" (cnipy/cni/build_front.py does)"
#endif
#ifndef CNIPY_LATEST
#define CNIPY_LATEST "1.1.0"
#endif
#ifndef CNIPY_VERSIONS
#define CNIPY_VERSIONS CNIPY_LATEST
#endif

#define MAGIC "CNF1"
#define DEFAULT_SOCKET "/run/cnipy/cni.sock"
#define MAX_STDIN (4u * 1024u * 1024u)
#define MAX_REPLY (16u * 1024u * 1024u)
#define CONNECT_TIMEOUT_S 3
#define CALL_TIMEOUT_S 180
#define PYTHON CNIPY_ROOT "/.venv/bin/python3"
#define LAUNCHER CNIPY_ROOT "/cnipy/cni/launch.py"

#ifdef CNIPY_PLUGIN
/* The launchers' marker line, in an ELF note within the file's first 4 KiB: invoke.own_plugin_name finds it
 * and runs the plugin in-process when a cnipy plugin delegates to this one. */
#define MARKER "\n# cnipy CNI plugin: " CNIPY_PLUGIN "\n"
#define MARKER_SIZE ((sizeof MARKER + 3) & ~3u)
__attribute__((used, aligned(4), section(".note.cnipy"))) static const struct {
    uint32_t namesz, descsz, type;
    char name[8];
    char desc[MARKER_SIZE];
} marker = {6, MARKER_SIZE, 0x434e4950, "cnipy", MARKER};
#endif

extern char **environ;

struct buf {
    char *data;
    size_t len, cap;
};

static const char *g_stdin = "";
static size_t g_stdin_len;

static void put(struct buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) abort();
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void put_u32(struct buf *b, uint32_t v) {
    unsigned char x[4] = {v >> 24, v >> 16, v >> 8, v};
    put(b, x, 4);
}

static uint32_t get_u32(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The cniVersion an error reply should carry: the config's when we speak it, else the latest. */
static void version_of(const char *data, size_t n, char out[16]) {
    strcpy(out, CNIPY_LATEST);
    const char *key = memmem(data, n, "\"cniVersion\"", 12);
    if (!key) return;
    const char *p = key + 12, *end = data + n;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ':')) p++;
    if (p >= end || *p++ != '"') return;
    char v[16];
    size_t i = 0;
    while (p < end && *p != '"' && i < sizeof v - 1) {
        if (!((*p >= '0' && *p <= '9') || *p == '.')) return;
        v[i++] = *p++;
    }
    v[i] = 0;
    if (i == 0 || p >= end || *p != '"') return;
    const char *list = CNIPY_VERSIONS;
    size_t vl = strlen(v);
    for (const char *s = list; *s;) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        if (len == vl && memcmp(s, v, len) == 0) {
            strcpy(out, v);
            return;
        }
        if (!comma) break;
        s = comma + 1;
    }
}

static void put_json_string(struct buf *b, const char *s) {
    put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            put(b, "\\", 1);
            put(b, s, 1);
        } else if (c < 0x20) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(b, esc, 6);
        } else {
            put(b, s, 1);
        }
    }
    put(b, "\"", 1);
}

/* Report a CNI error on stdout, as any plugin does, and exit 1. */
static void fail(int code, const char *msg, const char *details) {
    char ver[16], num[16];
    version_of(g_stdin, g_stdin_len, ver);
    struct buf b = {0};
    put(&b, "{\"cniVersion\":", 14);
    put_json_string(&b, ver);
    snprintf(num, sizeof num, "%d", code);
    put(&b, ",\"code\":", 8);
    put(&b, num, strlen(num));
    put(&b, ",\"msg\":", 7);
    put_json_string(&b, msg);
    if (details && *details) {
        put(&b, ",\"details\":", 11);
        put_json_string(&b, details);
    }
    put(&b, "}\n", 2);
    write_all(1, b.data, b.len);
    _exit(1);
}

/* Run the call in Python instead. `replay`: stdin was consumed already; hand the copy we kept to Python. */
static void run_python(const char *name, int replay) {
    if (replay) {
        int m = memfd_create("cnipy-stdin", 0);
        if (m < 0 || write_all(m, g_stdin, g_stdin_len) < 0 || lseek(m, 0, SEEK_SET) < 0 || dup2(m, 0) < 0)
            fail(11, "cnipy: could not hand the call over to the Python plugin", strerror(errno));
        if (m != 0) close(m);
    }
    signal(SIGPIPE, SIG_DFL);
    char *argv[] = {PYTHON, "-I", "-S", LAUNCHER, (char *)name, NULL};
    execv(PYTHON, argv);
    fail(5, "cnipy: cannot start the Python plugin", strerror(errno));
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until fd is ready for `events`; 0 when ready, -1 on timeout (errno ETIMEDOUT). */
static int wait_fd(int fd, short events, long long deadline) {
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, left > 1000000 ? 1000000 : (int)left);
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) return -1;
    }
}

static int dial(const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) return -1;
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    /* A blocking connect to a unix socket whose backlog is full waits up to SO_SNDTIMEO. */
    struct timeval tv = {.tv_sec = CONNECT_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int r;
    do r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    while (r < 0 && errno == EINTR);
    if (r < 0 || fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n, long long deadline) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN && wait_fd(fd, POLLOUT, deadline) == 0) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read exactly n bytes; *got counts every byte received so far (0 means the daemon never acknowledged). */
static int recv_all(int fd, char *p, size_t n, long long deadline, size_t *got) {
    while (n > 0) {
        ssize_t r = recv(fd, p, n, 0);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            *got += (size_t)r;
            continue;
        }
        if (r == 0) {
            errno = ECONNRESET;
            return -1;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN && wait_fd(fd, POLLIN, deadline) == 0) continue;
        return -1;
    }
    return 0;
}

static void read_stdin(struct buf *in) {
    for (;;) {
        if (in->cap - in->len == 0) {
            size_t cap = in->cap ? in->cap * 2 : 65536;
            if (cap > MAX_STDIN + 1) cap = MAX_STDIN + 1;
            if (cap <= in->len) return; /* MAX_STDIN + 1 bytes read: the plugin reports "too large" */
            char *d = realloc(in->data, cap);
            if (!d) abort();
            in->data = d;
            in->cap = cap;
        }
        ssize_t r = read(0, in->data + in->len, in->cap - in->len);
        if (r > 0) {
            in->len += (size_t)r;
        } else if (r == 0) {
            return;
        } else if (errno != EINTR) {
            in->len = 0; /* as the Python plugin: an unreadable stdin counts as empty */
            return;
        }
    }
}

static int forwarded(const char *kv) {
    return strncmp(kv, "CNI_", 4) == 0 || strncmp(kv, "CNIPY_", 6) == 0;
}

static void relay(const char *body, uint32_t len) {
    if (len < 8 || get_u32(body + 4) != 2) fail(100, "cnipy: malformed reply from the cnipy daemon", NULL);
    uint32_t code = get_u32(body);
    const char *p = body + 8, *end = body + len;
    if ((size_t)(end - p) < 4) fail(100, "cnipy: malformed reply from the cnipy daemon", NULL);
    uint32_t out_len = get_u32(p);
    p += 4;
    if ((size_t)(end - p) < (size_t)out_len + 4) fail(100, "cnipy: malformed reply from the cnipy daemon", NULL);
    const char *out = p;
    p += out_len;
    uint32_t err_len = get_u32(p);
    p += 4;
    if ((size_t)(end - p) != err_len) fail(100, "cnipy: malformed reply from the cnipy daemon", NULL);
    write_all(2, p, err_len);
    write_all(1, out, out_len);
    _exit((int)(code & 0xff));
}

int main(int argc, char **argv) {
#ifdef CNIPY_PLUGIN
    const char *name = CNIPY_PLUGIN;
    (void)argc;
    (void)argv;
    (void)marker;
#else
    if (argc < 2) fail(4, "cnipy: usage: cnipy-front PLUGIN-NAME", NULL);
    const char *name = argv[1];
#endif
    /* fds 0-2 must exist, or our socket could become "stdout". */
    for (int i = 0; i < 3; i++)
        if (fcntl(i, F_GETFD) < 0 && open("/dev/null", O_RDWR) != i) _exit(1);
    signal(SIGPIPE, SIG_IGN);

    const char *path = getenv("CNIPY_CNI_SOCKET");
    if (!path) path = DEFAULT_SOCKET;
    int fd = *path ? dial(path) : -1;
    if (fd < 0) run_python(name, 0); /* no daemon: nothing consumed yet, Python reads stdin itself */

    const char *cmd = getenv("CNI_COMMAND");
    struct buf in = {0};
    if (cmd && *cmd) read_stdin(&in);
    g_stdin = in.data ? in.data : "";
    g_stdin_len = in.len;

    long timeout_s = CALL_TIMEOUT_S;
    const char *t = getenv("CNIPY_FRONT_TIMEOUT");
    if (t && *t) {
        char *e;
        long v = strtol(t, &e, 10);
        if (*e == 0 && v > 0) timeout_s = v;
    }
    long long deadline = now_ms() + timeout_s * 1000;

    struct buf req = {0};
    uint32_t count = 2;
    size_t body = 4 + 4 + strlen(name) + 4 + g_stdin_len;
    for (char **e = environ; *e; e++)
        if (forwarded(*e)) {
            count++;
            body += 4 + strlen(*e);
        }
    put(&req, MAGIC, 4);
    put_u32(&req, (uint32_t)body);
    put_u32(&req, count);
    put_u32(&req, (uint32_t)strlen(name));
    put(&req, name, strlen(name));
    put_u32(&req, (uint32_t)g_stdin_len);
    put(&req, g_stdin, g_stdin_len);
    for (char **e = environ; *e; e++)
        if (forwarded(*e)) {
            put_u32(&req, (uint32_t)strlen(*e));
            put(&req, *e, strlen(*e));
        }

    size_t got = 0;
    char head[8];
    if (send_all(fd, req.data, req.len, deadline) < 0 || recv_all(fd, head, 8, deadline, &got) < 0) {
        int err = errno;
        close(fd);
        if (err == ETIMEDOUT) {
            char details[96];
            snprintf(details, sizeof details, "no reply within %ld s (CNIPY_FRONT_TIMEOUT)", timeout_s);
            fail(11, "cnipy: the cnipy daemon did not answer", details);
        }
        if (got == 0 || !(cmd && strcmp(cmd, "ADD") == 0)) run_python(name, 1);
        fail(11, "cnipy: the cnipy daemon failed during ADD; the attachment may be partly set up",
             "DEL it and retry the ADD");
    }
    if (memcmp(head, MAGIC, 4) != 0) {
        close(fd);
        run_python(name, 1); /* another protocol version: the daemon never runs a request it can not read */
    }
    uint32_t len = get_u32(head + 4);
    if (len > MAX_REPLY) fail(100, "cnipy: oversized reply from the cnipy daemon", NULL);
    char *reply = malloc(len ? len : 1);
    if (!reply) abort();
    if (recv_all(fd, reply, len, deadline, &got) < 0) {
        int err = errno;
        close(fd);
        if (err == ETIMEDOUT) fail(11, "cnipy: the cnipy daemon did not answer in time", NULL);
        if (!(cmd && strcmp(cmd, "ADD") == 0)) run_python(name, 1);
        fail(11, "cnipy: the cnipy daemon failed during ADD; the attachment may be partly set up",
             "DEL it and retry the ADD");
    }
    close(fd);
    relay(reply, len);
    return 0;
}
