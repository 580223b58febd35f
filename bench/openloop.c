/* openloop: an open-loop HTTP/1.1 load generator, the C twin of bench/_openloop.py (same command line, same
 * output; that module's docstring explains the method). Request i is due at start + i / rate; it goes out on
 * a free keep-alive connection (opened up front, one request in flight each) or waits in a FIFO for one, and
 * its latency is answer time - due time. The next due time is slept for on an absolute timerfd, since
 * epoll_wait's timeout has 1 ms steps.
 *
 * A non-200 answer is a failure (its latency is kept); so is a request whose connection broke (the
 * connection is reopened) and one still unanswered 30 s after the last was due. It measures Envoy's direct
 * responses, so it reads HTTP/1.1 answers with a Content-Length body and nothing else: a chunked, 1xx or
 * close-delimited answer is a failure reported on stderr, not parsed. Exit code 0 when the run happened
 * (failures or not), 1 when it could not start, 2 on bad usage.
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -o openloop openloop.c -lm (bench/_openloop.py does it on demand).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_S 1000000000LL
#define START_DELAY_NS (50 * 1000000LL) /* as _openloop.py: time to be scheduled before the first send */
#define DRAIN_NS (30 * NS_PER_S)        /* how long answers are waited for after the last request is due */
#define CONNECT_TIMEOUT_NS (10 * NS_PER_S)
#define HEAD_MAX 16384    /* per connection: an answer's head must fit; its body is only counted */
#define REQUEST_MAX 8192  /* under a fresh socket's send buffer, so one send() takes a request whole */
#define MAX_CONNECTIONS 65536
#define MAX_REQUESTS 100000000ULL /* 800 MB of latencies */
#define TIMER_TAG UINT64_MAX

static const char USAGE[] = "usage: openloop http://A.B.C.D[:port][/path] --rate R [--seconds S] [--connections N]"
                            " [-H 'Name: value']... [--vary NAME --users U] [--json]\n";

enum conn_state { CONN_CONNECTING, CONN_IDLE, CONN_BUSY, CONN_LOST };

struct conn {
    int fd;
    uint32_t generation; /* bumped by each (re)open, so an event for a closed socket is recognized */
    enum conn_state state;
    uint64_t request;    /* the request in flight (CONN_BUSY) */
    bool in_body;        /* its answer's head is in, and `remaining` bytes of body are still to come */
    uint64_t remaining;
    int status;
    bool close_after;
    size_t head_len; /* bytes of the answer's head received so far */
    char head[HEAD_MAX];
};

/* A kind of trouble: how often it happened and the first occurrence, printed on stderr at the end. */
struct tally {
    uint64_t count;
    char first[160];
};

struct run {
    const char *url;
    double rate, seconds;
    bool json;
    struct sockaddr_in address;
    char *request;
    size_t request_len;
    const char *vary; /* --vary: a header whose value is "u<request number mod users>" (bench/overload.py) */
    uint64_t users;
    int64_t start;
    uint64_t total;
    uint64_t sent;       /* requests due so far; [dispatched, sent) wait in the FIFO */
    uint64_t dispatched; /* requests handed to a connection */
    int64_t *latencies;  /* ns, one per answer */
    uint64_t answered;
    uint64_t broken; /* requests lost with their connection or to a bad answer */
    int epoll, timer;
    int64_t armed; /* the time the timer is set for, -1 when it is not */
    struct conn *conns;
    size_t conn_count, alive;
    bool stranded; /* every connection was lost: the run ended early */
    size_t *idle;  /* a ring of idle connections, used in turn as _openloop.py's queue does */
    size_t idle_head, idle_count;
    struct tally non_200, broken_tally, bad_answer, lost, reopened;
};

/* Ends the program with `code`: 2 (bad usage) also prints the usage line, 1 does not. */
static void fail(int code, const char *format, ...) {
    va_list args;
    fputs(code == 2 ? USAGE : "", stderr);
    fputs(code == 2 ? "openloop: error: " : "openloop: ", stderr);
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
    exit(code);
}

static void note(struct tally *tally, const char *format, ...) {
    if (tally->count++ == 0) {
        va_list args;
        va_start(args, format);
        vsnprintf(tally->first, sizeof tally->first, format, args);
        va_end(args);
    }
}

static int64_t now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * NS_PER_S + now.tv_nsec;
}

static int64_t due(const struct run *run, uint64_t request) {
    return run->start + (int64_t)((double)request / run->rate * 1e9);
}

/* ---- command line ---- */

static double positive(const char *option, const char *text, double max, bool integer) {
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (errno || end == text || *end || !(value > 0 && value <= max) || (integer && value != floor(value)))
        fail(2, "argument %s: expected a positive %s, got '%s'", option, integer ? "integer" : "number", text);
    return value;
}

/* The address of http://A.B.C.D[:port][/path[?query]], and the request: its target, Host (the authority as
 * written, as _openloop.py sends it) and the -H headers, as given (a bad one gets a 400: a failure). */
static void build_request(struct run *run, const char **headers, size_t header_count) {
    const char *url = run->url;
    char host[16];
    int host_end = 0, port_end = 0;
    unsigned port = 80;
    if (sscanf(url, "http://%15[0-9.]%n", host, &host_end) != 1 ||
        inet_pton(AF_INET, host, &run->address.sin_addr) != 1)
        fail(2, "expected http://A.B.C.D[:port][/path] (a numeric IPv4 host), got '%s'", url);
    if (url[host_end] == ':' && (sscanf(url + host_end, ":%5u%n", &port, &port_end) != 1 || port < 1 || port > 65535))
        fail(2, "bad port in '%s'", url);
    const char *authority = url + 7, *path = url + host_end + port_end;
    if (*path && !strchr("/?#", *path))
        fail(2, "expected http://A.B.C.D[:port][/path] (a numeric IPv4 host), got '%s'", url);
    run->address.sin_family = AF_INET;
    run->address.sin_port = htons((uint16_t)port);
    FILE *out = open_memstream(&run->request, &run->request_len);
    if (!out)
        fail(1, "open_memstream: %s", strerror(errno));
    fprintf(out, "GET %s%.*s HTTP/1.1\r\nHost: %.*s\r\n", *path == '/' ? "" : "/", (int)strcspn(path, "#"), path,
            (int)(path - authority), authority);
    for (size_t i = 0; i < header_count; i++)
        fprintf(out, "%s\r\n", headers[i]);
    fputs("\r\n", out);
    if (fclose(out) != 0 || run->request_len > REQUEST_MAX)
        fail(2, "the request is over %d bytes", REQUEST_MAX);
}

/* The value of the option at argv[*i], which moves past it. */
static const char *value_of(int argc, char **argv, int *i) {
    if (*i + 1 == argc)
        fail(2, "argument %s: expected one argument", argv[*i]);
    return argv[++*i];
}

static void parse_args(int argc, char **argv, struct run *run) {
    const char **headers = calloc((size_t)argc, sizeof *headers);
    size_t header_count = 0;
    if (!headers)
        fail(1, "out of memory");
    run->seconds = 10;
    run->conn_count = 64;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            fputs(USAGE, stdout);
            exit(0);
        } else if (strcmp(arg, "--json") == 0) {
            run->json = true;
        } else if (strcmp(arg, "--rate") == 0) {
            run->rate = positive(arg, value_of(argc, argv, &i), INFINITY, false);
        } else if (strcmp(arg, "--seconds") == 0) {
            run->seconds = positive(arg, value_of(argc, argv, &i), INFINITY, false);
        } else if (strcmp(arg, "--connections") == 0) {
            run->conn_count = (size_t)positive(arg, value_of(argc, argv, &i), MAX_CONNECTIONS, true);
        } else if (strcmp(arg, "-H") == 0 || strcmp(arg, "--header") == 0) {
            headers[header_count++] = value_of(argc, argv, &i);
        } else if (strcmp(arg, "--vary") == 0) {
            run->vary = value_of(argc, argv, &i);
            if (strlen(run->vary) > 64 || strcspn(run->vary, ":\r\n ") != strlen(run->vary))
                fail(2, "argument --vary: expected a header name, got '%s'", run->vary);
        } else if (strcmp(arg, "--users") == 0) {
            run->users = (uint64_t)positive(arg, value_of(argc, argv, &i), 1e12, true);
        } else if (arg[0] == '-' || run->url) {
            fail(2, "unrecognized argument: %s", arg);
        } else {
            run->url = arg;
        }
    }
    if (!run->url || run->rate == 0)
        fail(2, "the following arguments are required: %s", run->url ? "--rate" : "url");
    if (!run->vary != !run->users)
        fail(2, "--vary and --users go together");
    build_request(run, headers, header_count);
    free(headers);
}

/* ---- connections ---- */

/* What epoll hands back with a connection's events: its generation and its index. */
static uint64_t tag(const struct run *run, const struct conn *conn) {
    return (uint64_t)conn->generation << 32 | (uint64_t)(conn - run->conns);
}

/* Starts a non-blocking connect, watched for EPOLLOUT; 0, or the errno of a connect that failed at once. */
static int conn_open(struct run *run, struct conn *conn) {
    conn->generation++; /* even if this fails: events still queued for the old socket are then ignored */
    conn->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (conn->fd < 0)
        return errno;
    int one = 1; /* as asyncio and wrk: a request goes out at once, not after Nagle's delay */
    setsockopt(conn->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(conn->fd, (const struct sockaddr *)&run->address, sizeof run->address) < 0 && errno != EINPROGRESS) {
        int error = errno;
        close(conn->fd);
        return error;
    }
    conn->state = CONN_CONNECTING;
    struct epoll_event event = {.events = EPOLLOUT, .data.u64 = tag(run, conn)};
    if (epoll_ctl(run->epoll, EPOLL_CTL_ADD, conn->fd, &event) < 0)
        fail(1, "epoll_ctl: %s", strerror(errno));
    return 0;
}

static void conn_lost(struct run *run, struct conn *conn, int error) {
    note(&run->lost, "%s", strerror(error));
    conn->state = CONN_LOST;
    run->alive--;
}

/* Takes an idle connection out of the ring (in order), as it is about to be reopened. */
static void leave_idle(struct run *run, struct conn *conn) {
    size_t n = run->conn_count, index = (size_t)(conn - run->conns), i = 0;
    while (i < run->idle_count && run->idle[(run->idle_head + i) % n] != index)
        i++;
    for (; i + 1 < run->idle_count; i++)
        run->idle[(run->idle_head + i) % n] = run->idle[(run->idle_head + i + 1) % n];
    if (i < run->idle_count)
        run->idle_count--;
}

/* Closes the connection and opens a new one in its place. */
static void reopen(struct run *run, struct conn *conn) {
    if (conn->state == CONN_IDLE)
        leave_idle(run, conn);
    close(conn->fd); /* also takes it out of the epoll set */
    int error = conn_open(run, conn);
    if (error)
        conn_lost(run, conn, error);
}

/* Reopens a connection that went wrong; the request in flight, if any, is a failure, noted in `tally`. */
static void broke(struct run *run, struct conn *conn, struct tally *tally, const char *format, const char *detail) {
    if (conn->state == CONN_BUSY) {
        run->broken++;
        note(tally, format, detail);
    }
    reopen(run, conn);
}

static void make_idle(struct run *run, struct conn *conn) {
    conn->state = CONN_IDLE;
    run->idle[(run->idle_head + run->idle_count++) % run->conn_count] = (size_t)(conn - run->conns);
}

/* Hands the requests waiting in the FIFO to idle connections, oldest first. */
static void dispatch(struct run *run) {
    while (run->dispatched < run->sent && run->idle_count) {
        struct conn *conn = &run->conns[run->idle[run->idle_head]];
        run->idle_head = (run->idle_head + 1) % run->conn_count;
        run->idle_count--;
        conn->state = CONN_BUSY;
        conn->request = run->dispatched++;
        conn->in_body = false;
        conn->head_len = 0;
        const char *data = run->request;
        size_t len = run->request_len;
        char varied[REQUEST_MAX + 160];
        if (run->vary) { /* the request without its blank line, then the varying header and the blank line */
            int made = snprintf(varied, sizeof varied, "%.*s%s: u%llu\r\n\r\n", (int)(len - 2), data, run->vary,
                                (unsigned long long)(conn->request % run->users));
            data = varied;
            len = (size_t)made;
        }
        ssize_t n = send(conn->fd, data, len, MSG_NOSIGNAL);
        if (n != (ssize_t)len)
            broke(run, conn, &run->broken_tally, "send: %s", n < 0 ? strerror(errno) : "only part of the request");
    }
}

/* ---- answers ---- */

/* The value of the header `name` ("\r\nname:", the line break before it included) in a head, or NULL. */
static const char *header(const char *head, const char *name) {
    const char *at = strcasestr(head, name);
    return at ? at + strlen(name) + strspn(at + strlen(name), " \t") : NULL;
}

/* Whether only blanks are left of a header line: then a "\r", or the NUL ending the head. */
static bool line_ends(const char *text) {
    text += strspn(text, " \t");
    return *text == '\r' || *text == '\0';
}

/* The head of an answer (status line and headers, up to the blank line at `blank`): sets status, the body's
 * length and whether the connection closes after it; NULL, or what is wrong with it. Only what Envoy's
 * direct responses use is understood; anything else is refused rather than guessed at. */
static const char *parse_head(struct conn *conn, char *blank) {
    const char *head = conn->head;
    *blank = '\0'; /* from here on the head is a string */
    if (strlen(head) != (size_t)(blank - head))
        return "malformed answer: a NUL byte in the head";
    if (strncmp(head, "HTTP/1.1 ", 9) != 0 || strspn(head + 9, "0123456789") != 3 ||
        (head[12] && head[12] != ' ' && head[12] != '\r'))
        return "unsupported answer: the status line is not 'HTTP/1.1 NNN ...'";
    conn->status = atoi(head + 9);
    if (conn->status < 200)
        return "unsupported answer: a 1xx interim status";
    if (header(head, "\r\ntransfer-encoding:"))
        return "unsupported answer: Transfer-Encoding (chunked?)";
    const char *connection = header(head, "\r\nconnection:"), *length = header(head, "\r\ncontent-length:");
    /* Anything but a plain keep-alive (Envoy sends "close" when it drains): reopen, to be safe. */
    conn->close_after = connection && !(strncasecmp(connection, "keep-alive", 10) == 0 && line_ends(connection + 10));
    conn->remaining = 0;
    if (length && header(length, "\r\ncontent-length:"))
        return "unsupported answer: several Content-Length headers";
    if (length) {
        char *end;
        errno = 0;
        conn->remaining = strtoull(length, &end, 10);
        if (*length < '0' || *length > '9' || !line_ends(end) || errno)
            return "malformed answer: a bad Content-Length";
    }
    if (conn->status == 204 || conn->status == 304) /* no body, whatever Content-Length says */
        conn->remaining = 0;
    else if (!length)
        return "unsupported answer: no Content-Length (a body delimited by the close)";
    return NULL;
}

static void answered(struct run *run, struct conn *conn) {
    run->latencies[run->answered++] = now_ns() - due(run, conn->request);
    if (conn->status != 200)
        note(&run->non_200, "status %d", conn->status);
    if (conn->close_after) { /* reopen, not broke: the request is answered */
        reopen(run, conn);
        return;
    }
    make_idle(run, conn);
    dispatch(run);
}

static void on_readable(struct run *run, struct conn *conn) {
    /* A head is gathered in conn->head (with room for a NUL); a body is only counted, read over it. */
    char *into = conn->in_body ? conn->head : conn->head + conn->head_len;
    ssize_t n = recv(conn->fd, into, HEAD_MAX - 1 - (size_t)(into - conn->head), 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n < 0) {
        broke(run, conn, &run->broken_tally, "recv: %s", strerror(errno));
        return;
    }
    if (conn->state != CONN_BUSY) {
        note(&run->reopened, "%s", n ? "bytes while no request was in flight" : "closed by the server while idle");
        reopen(run, conn);
        return;
    }
    if (n == 0) {
        broke(run, conn, &run->broken_tally, "%s", "connection closed before the answer was complete");
        return;
    }
    size_t body = (size_t)n;
    if (!conn->in_body) {
        conn->head_len += (size_t)n;
        char *blank = memmem(conn->head, conn->head_len, "\r\n\r\n", 4);
        if (!blank && conn->head_len < HEAD_MAX - 1)
            return;
        const char *why = blank ? parse_head(conn, blank) : "unsupported answer: a head over 16 KiB";
        if (why) {
            broke(run, conn, &run->bad_answer, "%s", why);
            return;
        }
        conn->in_body = true;
        body = conn->head_len - (size_t)(blank + 4 - conn->head);
    }
    if (body > conn->remaining)
        broke(run, conn, &run->bad_answer, "%s", "malformed answer: more bytes than its Content-Length");
    else if ((conn->remaining -= body) == 0)
        answered(run, conn);
}

static void on_event(struct run *run, struct conn *conn) {
    if (conn->state != CONN_CONNECTING) {
        on_readable(run, conn); /* EPOLLIN, EPOLLERR or EPOLLHUP: recv tells which */
        return;
    }
    int error = 0;
    socklen_t len = sizeof error;
    if (getsockopt(conn->fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0)
        error = errno;
    if (error) {
        close(conn->fd);
        conn_lost(run, conn, error);
        return;
    }
    struct epoll_event event = {.events = EPOLLIN, .data.u64 = tag(run, conn)};
    if (epoll_ctl(run->epoll, EPOLL_CTL_MOD, conn->fd, &event) < 0)
        fail(1, "epoll_ctl: %s", strerror(errno));
    make_idle(run, conn);
    dispatch(run);
}

/* ---- the run ---- */

static void setup(struct run *run) {
    double total = floor(run->rate * run->seconds);
    if (total < 1 || total > (double)MAX_REQUESTS)
        fail(2, "--rate %g for --seconds %g gives %.0f requests, not 1 to %llu", run->rate, run->seconds, total,
             MAX_REQUESTS);
    run->total = (uint64_t)total;
    run->latencies = malloc(run->total * sizeof *run->latencies);
    run->conns = calloc(run->conn_count, sizeof *run->conns);
    run->idle = calloc(run->conn_count, sizeof *run->idle);
    if (!run->latencies || !run->conns || !run->idle)
        fail(1, "out of memory for %llu requests and %zu connections", (unsigned long long)run->total,
             run->conn_count);
    run->epoll = epoll_create1(EPOLL_CLOEXEC);
    run->timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (run->epoll < 0 || run->timer < 0)
        fail(1, "epoll_create1/timerfd_create: %s", strerror(errno));
    struct epoll_event event = {.events = EPOLLIN, .data.u64 = TIMER_TAG};
    if (epoll_ctl(run->epoll, EPOLL_CTL_ADD, run->timer, &event) < 0)
        fail(1, "epoll_ctl: %s", strerror(errno));
    run->armed = -1;
}

static void arm(struct run *run, int64_t when) {
    if (run->armed == when)
        return;
    struct itimerspec spec = {.it_value = {.tv_sec = when / NS_PER_S, .tv_nsec = when % NS_PER_S}};
    if (timerfd_settime(run->timer, TFD_TIMER_ABSTIME, &spec, NULL) < 0)
        fail(1, "timerfd_settime: %s", strerror(errno));
    run->armed = when;
}

/* Waits for events and hands them to their connections; a stale event (its socket closed since) is dropped,
 * a timer expiry only wakes the caller. */
static void wait_events(struct run *run, int timeout_ms) {
    struct epoll_event events[256];
    int n = epoll_wait(run->epoll, events, 256, timeout_ms);
    if (n < 0 && errno != EINTR)
        fail(1, "epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        if (events[i].data.u64 == TIMER_TAG) {
            uint64_t expirations;
            if (read(run->timer, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                fail(1, "timerfd read: %s", strerror(errno));
            run->armed = -1; /* fired: arm() must set it again even for the same time */
            continue;
        }
        struct conn *conn = &run->conns[events[i].data.u64 & UINT32_MAX];
        if (conn->generation == events[i].data.u64 >> 32)
            on_event(run, conn);
    }
}

/* Opens every connection before the clock starts, as _openloop.py does; any failure ends the program. */
static void connect_all(struct run *run) {
    for (size_t i = 0; i < run->conn_count; i++) {
        int error = conn_open(run, &run->conns[i]);
        if (error)
            fail(1, "connect to %s: %s", run->url, strerror(error));
    }
    run->alive = run->conn_count;
    int64_t deadline = now_ns() + CONNECT_TIMEOUT_NS;
    while (run->idle_count < run->conn_count && !run->lost.count) {
        int64_t left = deadline - now_ns();
        if (left <= 0)
            fail(1, "connect to %s: timed out", run->url);
        wait_events(run, (int)(left / 1000000) + 1);
    }
    if (run->lost.count)
        fail(1, "connect to %s: %s", run->url, run->lost.first);
}

/* Sends every request when it is due and waits for the answers; returns the end time. */
static int64_t drive(struct run *run) {
    run->start = now_ns() + START_DELAY_NS;
    int64_t last_due = due(run, run->total - 1), deadline = last_due + DRAIN_NS;
    for (;;) {
        int64_t now = now_ns();
        while (run->sent < run->total && due(run, run->sent) <= now)
            run->sent++;
        dispatch(run);
        if (run->answered + run->broken == run->total || now >= deadline)
            return now;
        if (run->alive == 0) {
            run->stranded = true; /* "achieved" still spans the whole schedule */
            return now > last_due ? now : last_due;
        }
        arm(run, run->sent < run->total ? due(run, run->sent) : deadline);
        wait_events(run, -1);
    }
}

/* ---- output ---- */

static int compare_ns(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* As _openloop.py: the value at index min(n - 1, int(q * n)) of the sorted latencies, in ms. */
static double percentile(const struct run *run, double q) {
    if (run->answered == 0)
        return NAN;
    uint64_t index = (uint64_t)(q * (double)run->answered);
    return (double)run->latencies[index < run->answered ? index : run->answered - 1] / 1e6;
}

/* A number as Python's f"{value:,.2f}" writes it ("nan" has no ".dd", so it gets no comma). */
static void grouped(char out[64], double value) {
    char plain[40];
    int len = snprintf(plain, sizeof plain, "%.2f", value), o = 0;
    len = len < (int)sizeof plain ? len : (int)sizeof plain - 1; /* a figure that large is garbled, not overrun */
    for (int i = 0; i < len; i++) {
        int after = len - 4 - i; /* integer digits after this character */
        out[o++] = plain[i];
        if (plain[i] >= '0' && plain[i] <= '9' && after > 0 && after % 3 == 0)
            out[o++] = ',';
    }
    out[o] = '\0';
}

static void report(const struct run *run, int64_t end) {
    uint64_t unanswered = run->total - run->answered - run->broken;
    const char *names[] = {"rate", "achieved", "requests", "failures", "p50_ms", "p90_ms", "p99_ms", "max_ms"};
    double values[] = {
        run->rate,
        (double)run->answered / ((double)(end - run->start) / 1e9),
        (double)run->total,
        (double)(run->non_200.count + run->broken + unanswered),
        percentile(run, 0.50),
        percentile(run, 0.90),
        percentile(run, 0.99),
        percentile(run, 1.0), /* the index clamps to the last: the maximum */
    };
    for (size_t i = 0; i < sizeof values / sizeof *values; i++) {
        char text[64];
        if (run->json) {
            if (isnan(values[i]))
                snprintf(text, sizeof text, "NaN"); /* what Python's json writes and reads */
            else
                snprintf(text, sizeof text, "%.6f", values[i]);
            printf("%s\"%s\": %s", i ? ", " : "{", names[i], text);
        } else {
            grouped(text, values[i]);
            printf("%s%s %s", i ? "  " : "", names[i], text);
        }
    }
    printf(run->json ? "}\n" : "\n");
    fflush(stdout); /* before the notes on stderr, so a terminal shows them after the figures */
    const struct tally *tallies[] = {&run->non_200, &run->broken_tally, &run->bad_answer, &run->lost, &run->reopened};
    const char *what[] = {"answers other than 200", "requests lost with their connection (reopened)",
                          "unsupported or malformed answers, counted as failures (connection reopened)",
                          "reconnects failed", "idle connections reopened"};
    for (size_t i = 0; i < sizeof tallies / sizeof *tallies; i++)
        if (tallies[i]->count)
            fprintf(stderr, "openloop: %llu %s (first: %s)\n", (unsigned long long)tallies[i]->count, what[i],
                    tallies[i]->first);
    if (run->stranded)
        fprintf(stderr, "openloop: every connection was lost; %llu requests never answered\n",
                (unsigned long long)unanswered);
    else if (unanswered)
        fprintf(stderr, "openloop: %llu requests unanswered %lld s after the last was due\n",
                (unsigned long long)unanswered, DRAIN_NS / NS_PER_S);
}

int main(int argc, char **argv) {
    struct run run = {0};
    parse_args(argc, argv, &run);
    signal(SIGPIPE, SIG_IGN);
    setup(&run);
    connect_all(&run);
    int64_t end = drive(&run);
    qsort(run.latencies, run.answered, sizeof *run.latencies, compare_ns);
    report(&run, end);
    return 0;
}
