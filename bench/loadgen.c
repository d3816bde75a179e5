/*
 * loadgen: a UDP request/response load generator for udptime's benchmark.
 *
 * Loopback IPv4 only.  One unconnected socket sends every request; each
 * request leaves from one of --sources distinct source addresses in
 * 127.1.0.0/16 (chosen per datagram with IP_PKTINFO), so that the server
 * sees many clients and a reply is matched to its request by the address it
 * comes back to.  Latency runs from just before the send to the kernel's
 * receive timestamp of the reply (SO_TIMESTAMPNS), so the generator's own
 * scheduling does not count.
 *
 *   closed loop: --inflight N requests outstanding at all times
 *   open loop:   --rate R requests per second, sent on schedule
 *
 * With --spin the closed loop never sleeps waiting for replies, so that
 * each reply is answered with a new request at once (a sleeping generator
 * and a server take turns instead of working at the same time), and the
 * server's sends never have to wake it (on loopback the kernel charges that
 * to the sender).  "busy" is then the share of the time it spent handling
 * replies, rather than its CPU use, which is all of a core.
 *
 * Runs are bounded by --duration seconds and --max-requests, and end early
 * on SIGTERM or SIGINT (a background load stopped when its work is done).  A
 * request unanswered after --timeout-ms is counted lost (closed loop: and
 * replaced).  Prints one JSON object on stdout.
 *
 * Build: cc -O2 -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_PAYLOAD 512
#define NTP_UNIX 2208988800ULL

typedef struct {
    uint64_t sentNs;  /* 0: not outstanding */
    uint32_t addr;    /* source address index in use */
    uint64_t cookie;  /* NTP transmit timestamp sent */
} Slot;

static struct {
    const char *host;
    int port;
    int closed;
    int inflight;
    double rate;
    double duration;
    double warmup;
    long maxRequests;
    int sources;
    int timeoutMs;
    int ntp;
    int spin;
    unsigned char payload[MAX_PAYLOAD];
    size_t payloadLen;
    long maxSamples;
} cfg = {
    .host = "127.0.0.1",
    .closed = 1,
    .inflight = 32,
    .rate = 10000,
    .duration = 3,
    .warmup = 0.5,
    .maxRequests = 50000000,
    .sources = 256,
    .timeoutMs = 200,
    .maxSamples = 20000000,
};

static int sock;
static struct sockaddr_in target;
static Slot *slots;
static int nslots;
static uint32_t *samples;
static long nsamples;
static long sent, received, lost, stray, bad, sendErrors;
static uint64_t busyNs; /* --spin: time spent handling replies */
static long minReply = -1, maxReply;
static int recording;
static uint64_t cookieSeq = 1;
static volatile sig_atomic_t stopRequested;

static void requestStop(int signum) {
    (void)signum;
    stopRequested = 1;
}

static uint64_t nowNs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static double cpuSeconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static uint32_t sourceAddress(uint32_t index) {
    /* 127.1.0.1 upwards */
    return htonl((127u << 24) | (1u << 16) | (index + 1));
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* Per-message send buffers for sendmmsg. */
static struct mmsghdr smsgs[BATCH];
static struct iovec siov[BATCH];
static unsigned char spayload[BATCH][MAX_PAYLOAD];
static union {
    char buf[CMSG_SPACE(sizeof(struct in_pktinfo))];
    struct cmsghdr align;
} scontrol[BATCH];

static void prepareSend(int i, int slot, uint32_t addrIndex) {
    unsigned char *p = spayload[i];
    memcpy(p, cfg.payload, cfg.payloadLen);
    if (cfg.ntp) {
        uint64_t cookie = cookieSeq++;
        slots[slot].cookie = cookie;
        for (int b = 0; b < 8; b++) p[40 + b] = (unsigned char)(cookie >> (56 - 8 * b));
    }
    siov[i].iov_base = p;
    siov[i].iov_len = cfg.payloadLen;
    struct msghdr *m = &smsgs[i].msg_hdr;
    memset(m, 0, sizeof(*m));
    m->msg_name = &target;
    m->msg_namelen = sizeof(target);
    m->msg_iov = &siov[i];
    m->msg_iovlen = 1;
    m->msg_control = scontrol[i].buf;
    m->msg_controllen = sizeof(scontrol[i].buf);
    struct cmsghdr *c = CMSG_FIRSTHDR(m);
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
    struct in_pktinfo pi;
    memset(&pi, 0, sizeof(pi));
    pi.ipi_spec_dst.s_addr = sourceAddress(addrIndex);
    memcpy(CMSG_DATA(c), &pi, sizeof(pi));
    slots[slot].addr = addrIndex;
}

/* Send the first n prepared messages; returns how many went out. */
static int flushSends(int n, int *slotOf) {
    int done = 0;
    uint64_t t = nowNs();
    for (int i = 0; i < n; i++) slots[slotOf[i]].sentNs = t;
    while (done < n) {
        int r = sendmmsg(sock, smsgs + done, (unsigned)(n - done), 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            /* ENOBUFS/EAGAIN: the message is lost as a datagram would be. */
            sendErrors++;
            slots[slotOf[done]].sentNs = t; /* it will time out */
            done++;
            continue;
        }
        done += r;
    }
    sent += n;
    return n;
}

/* Receive buffers for recvmmsg. */
static struct mmsghdr rmsgs[BATCH];
static struct iovec riov[BATCH];
static unsigned char rbuf[BATCH][2048];
static union {
    char buf[CMSG_SPACE(sizeof(struct in_pktinfo)) + CMSG_SPACE(sizeof(struct timespec))];
    struct cmsghdr align;
} rcontrol[BATCH];
static struct sockaddr_in rfrom[BATCH];

static void record(uint64_t latency) {
    if (!recording) return;
    if (nsamples < cfg.maxSamples) {
        samples[nsamples++] = latency > UINT32_MAX ? UINT32_MAX : (uint32_t)latency;
    }
}

/* Drain replies; returns the slots freed (written into freed[]). */
static int receiveReplies(int *freed, int maxFreed) {
    int nfreed = 0;
    while (nfreed + BATCH <= maxFreed || nfreed == 0) {
        for (int i = 0; i < BATCH; i++) {
            riov[i].iov_base = rbuf[i];
            riov[i].iov_len = sizeof(rbuf[i]);
            struct msghdr *m = &rmsgs[i].msg_hdr;
            m->msg_name = &rfrom[i];
            m->msg_namelen = sizeof(rfrom[i]);
            m->msg_iov = &riov[i];
            m->msg_iovlen = 1;
            m->msg_control = rcontrol[i].buf;
            m->msg_controllen = sizeof(rcontrol[i].buf);
            m->msg_flags = 0;
        }
        int n = recvmmsg(sock, rmsgs, BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
            if (errno == ECONNREFUSED) continue;
            die("recvmmsg");
        }
        if (n == 0) break;
        uint64_t fallback = nowNs();
        for (int i = 0; i < n; i++) {
            struct msghdr *m = &rmsgs[i].msg_hdr;
            uint32_t dst = 0;
            uint64_t rx = fallback;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
                if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
                    struct in_pktinfo pi;
                    memcpy(&pi, CMSG_DATA(c), sizeof(pi));
                    dst = ntohl(pi.ipi_addr.s_addr);
                } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec ts;
                    memcpy(&ts, CMSG_DATA(c), sizeof(ts));
                    rx = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
                }
            }
            if (rfrom[i].sin_port != target.sin_port || (dst >> 16) != ((127u << 8) | 1u)) {
                stray++;
                continue;
            }
            uint32_t addrIndex = (dst & 0xFFFF) - 1;
            if (addrIndex >= (uint32_t)cfg.sources) {
                stray++;
                continue;
            }
            int slot = cfg.closed ? (int)(addrIndex % (uint32_t)nslots) : (int)addrIndex;
            Slot *s = &slots[slot];
            if (s->sentNs == 0 || s->addr != addrIndex) {
                stray++;
                continue;
            }
            long len = (long)rmsgs[i].msg_len;
            if (cfg.ntp) {
                uint64_t origin = 0;
                for (int b = 0; b < 8; b++) origin = (origin << 8) | rbuf[i][24 + b];
                if (len < 48 || origin != s->cookie) {
                    bad++;
                    continue;
                }
            }
            if (minReply < 0 || len < minReply) minReply = len;
            if (len > maxReply) maxReply = len;
            received++;
            record(rx > s->sentNs ? rx - s->sentNs : 0);
            s->sentNs = 0;
            freed[nfreed++] = slot;
            if (nfreed >= maxFreed) break;
        }
        if (n < BATCH) break;
    }
    return nfreed;
}

static int cmpU32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double percentile(double p) {
    if (nsamples == 0) return -1;
    long i = (long)(p / 100.0 * (double)(nsamples - 1) + 0.5);
    if (i >= nsamples) i = nsamples - 1;
    return samples[i] / 1000.0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [--host 127.0.0.1] [--closed N | --rate R]\n"
            "  [--duration S] [--warmup S] [--max-requests C] [--sources K]\n"
            "  [--timeout-ms T] [--ntp | --text STRING | --hex HEX] [--spin]\n");
    exit(2);
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"host", required_argument, 0, 'h'},     {"port", required_argument, 0, 'p'},
        {"closed", required_argument, 0, 'c'},   {"rate", required_argument, 0, 'r'},
        {"duration", required_argument, 0, 'd'}, {"warmup", required_argument, 0, 'w'},
        {"max-requests", required_argument, 0, 'm'},
        {"sources", required_argument, 0, 's'},  {"timeout-ms", required_argument, 0, 't'},
        {"ntp", no_argument, 0, 'n'},            {"text", required_argument, 0, 'x'},
        {"hex", required_argument, 0, 'X'},      {"spin", no_argument, 0, 'S'},
        {0, 0, 0, 0}};
    int o;
    memcpy(cfg.payload, "time", 4);
    cfg.payloadLen = 4;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': cfg.host = optarg; break;
        case 'p': cfg.port = atoi(optarg); break;
        case 'c': cfg.closed = 1; cfg.inflight = atoi(optarg); break;
        case 'r': cfg.closed = 0; cfg.rate = atof(optarg); break;
        case 'd': cfg.duration = atof(optarg); break;
        case 'w': cfg.warmup = atof(optarg); break;
        case 'm': cfg.maxRequests = atol(optarg); break;
        case 's': cfg.sources = atoi(optarg); break;
        case 't': cfg.timeoutMs = atoi(optarg); break;
        case 'S': cfg.spin = 1; break;
        case 'n':
            cfg.ntp = 1;
            memset(cfg.payload, 0, 48);
            cfg.payload[0] = (0 << 6) | (4 << 3) | 3; /* LI 0, v4, client */
            cfg.payloadLen = 48;
            break;
        case 'x':
            cfg.payloadLen = strlen(optarg);
            if (cfg.payloadLen > MAX_PAYLOAD) usage();
            memcpy(cfg.payload, optarg, cfg.payloadLen);
            break;
        case 'X': {
            size_t n = strlen(optarg);
            if (n % 2 || n / 2 > MAX_PAYLOAD) usage();
            for (size_t i = 0; i < n / 2; i++) {
                int a = hexval(optarg[2 * i]), b = hexval(optarg[2 * i + 1]);
                if (a < 0 || b < 0) usage();
                cfg.payload[i] = (unsigned char)(a * 16 + b);
            }
            cfg.payloadLen = n / 2;
            break;
        }
        default: usage();
        }
    }
    if (cfg.port <= 0 || cfg.sources < 1 || cfg.sources > 65000 || cfg.inflight < 1 ||
        cfg.inflight > 65000 || cfg.rate <= 0)
        usage();
    if (cfg.closed) {
        /* every in-flight slot cycles through its own share of the sources */
        if (cfg.sources < cfg.inflight) cfg.sources = cfg.inflight;
        cfg.sources -= cfg.sources % cfg.inflight;
        nslots = cfg.inflight;
    } else {
        nslots = cfg.sources;
    }
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    /* no SA_RESTART: a stop request interrupts the wait for replies */
    struct sigaction stop;
    memset(&stop, 0, sizeof(stop));
    stop.sa_handler = requestStop;
    sigemptyset(&stop.sa_mask);
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGINT, &stop, NULL);

    memset(&target, 0, sizeof(target));
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)cfg.port);
    if (inet_pton(AF_INET, cfg.host, &target.sin_addr) != 1) usage();

    sock = socket(AF_INET, SOCK_DGRAM, 0);
    if (sock < 0) die("socket");
    int one = 1, big = 4 << 20;
    setsockopt(sock, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
    setsockopt(sock, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one));
    setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    struct sockaddr_in any;
    memset(&any, 0, sizeof(any));
    any.sin_family = AF_INET;
    if (bind(sock, (struct sockaddr *)&any, sizeof(any)) < 0) die("bind");

    slots = calloc((size_t)nslots, sizeof(Slot));
    samples = malloc(sizeof(uint32_t) * (size_t)cfg.maxSamples);
    if (!slots || !samples) die("malloc");
    int *freed = malloc(sizeof(int) * (size_t)(nslots + BATCH));
    int slotOf[BATCH];
    uint32_t *nextAddr = calloc((size_t)nslots, sizeof(uint32_t));
    if (!freed || !nextAddr) die("malloc");

    uint64_t timeoutNs = (uint64_t)cfg.timeoutMs * 1000000ULL;
    uint64_t start = nowNs();
    uint64_t measureStart = start + (uint64_t)(cfg.warmup * 1e9);
    uint64_t end = measureStart + (uint64_t)(cfg.duration * 1e9);
    double cpuStart = 0;
    long sentAtStart = 0, receivedAtStart = 0, lostAtStart = 0;
    uint64_t lastScan = start;
    long issued = 0;
    double interval = 1e9 / cfg.rate;
    uint64_t nextSend = start;
    struct pollfd pfd = {.fd = sock, .events = POLLIN};

    if (cfg.closed) {
        /* fill the pipe */
        int pending = 0;
        for (int s = 0; s < nslots; s++) {
            prepareSend(pending, s, (uint32_t)s);
            nextAddr[s] = 1;
            slotOf[pending++] = s;
            if (pending == BATCH) {
                flushSends(pending, slotOf);
                pending = 0;
            }
        }
        if (pending) flushSends(pending, slotOf);
        issued = nslots;
    }

    for (;;) {
        uint64_t now = nowNs();
        if (!recording && now >= measureStart) {
            recording = 1;
            cpuStart = cpuSeconds();
            sentAtStart = sent;
            receivedAtStart = received;
            lostAtStart = lost;
            measureStart = now;
        }
        if (now >= end || issued >= cfg.maxRequests || stopRequested) break;

        if (cfg.closed) {
            uint64_t before = cfg.spin ? nowNs() : 0;
            int nf = receiveReplies(freed, nslots);
            if (now - lastScan > timeoutNs / 4) {
                lastScan = now;
                for (int s = 0; s < nslots; s++) {
                    if (slots[s].sentNs && now - slots[s].sentNs > timeoutNs) {
                        lost++;
                        slots[s].sentNs = 0;
                        freed[nf++] = s;
                    }
                }
            }
            int pending = 0;
            for (int i = 0; i < nf; i++) {
                int s = freed[i];
                uint32_t a = (uint32_t)s + (nextAddr[s] % (uint32_t)(cfg.sources / nslots)) *
                                               (uint32_t)nslots;
                nextAddr[s]++;
                prepareSend(pending, s, a);
                slotOf[pending++] = s;
                if (pending == BATCH) {
                    flushSends(pending, slotOf);
                    pending = 0;
                }
            }
            if (pending) flushSends(pending, slotOf);
            issued += nf;
            if (cfg.spin && nf && recording) busyNs += nowNs() - before;
            if (nf == 0 && !cfg.spin) {
                int r = poll(&pfd, 1, 1);
                if (r < 0 && errno != EINTR) die("poll");
            }
        } else {
            /* open loop: send what is due, one datagram per scheduled time */
            int pending = 0;
            while (nextSend <= now && pending < BATCH) {
                int s = (int)(issued % nslots);
                if (slots[s].sentNs) {
                    lost++;
                    slots[s].sentNs = 0;
                }
                prepareSend(pending, s, (uint32_t)s);
                slotOf[pending++] = s;
                issued++;
                nextSend = start + (uint64_t)((double)issued * interval);
            }
            if (pending) flushSends(pending, slotOf);
            receiveReplies(freed, nslots);
            now = nowNs();
            if (nextSend > now) {
                uint64_t wait = nextSend - now;
                struct timespec ts = {.tv_sec = (time_t)(wait / 1000000000ULL),
                                      .tv_nsec = (long)(wait % 1000000000ULL)};
                int r = ppoll(&pfd, 1, &ts, NULL);
                if (r < 0 && errno != EINTR) die("ppoll");
            }
        }
    }
    if (!recording) {
        /* stopped during the warm-up: an empty measurement */
        recording = 1;
        cpuStart = cpuSeconds();
        sentAtStart = sent;
        receivedAtStart = received;
        lostAtStart = lost;
        measureStart = nowNs();
    }
    uint64_t measureEnd = nowNs();
    double cpu = cpuSeconds() - cpuStart;
    long sentMeasured = sent - sentAtStart;
    long receivedMeasured = received - receivedAtStart;
    /* drain: replies still on their way count, the rest are lost */
    uint64_t drainEnd = nowNs() + timeoutNs;
    recording = 1;
    for (;;) {
        int outstanding = 0;
        for (int s = 0; s < nslots; s++) outstanding += slots[s].sentNs != 0;
        if (!outstanding || nowNs() >= drainEnd) {
            lost += outstanding;
            break;
        }
        if (receiveReplies(freed, nslots) == 0) poll(&pfd, 1, 1);
    }
    long lostMeasured = lost - lostAtStart;
    double seconds = (double)(measureEnd - measureStart) / 1e9;
    if (seconds <= 0) seconds = 1e-9;

    qsort(samples, (size_t)nsamples, sizeof(uint32_t), cmpU32);
    printf("{\"mode\": \"%s\", \"inflight\": %d, \"offered\": %.1f, \"sources\": %d, "
           "\"seconds\": %.4f, \"sent\": %ld, \"received\": %ld, \"lost\": %ld, "
           "\"stray\": %ld, \"bad\": %ld, \"send_errors\": %ld, \"rps\": %.1f, "
           "\"reply_min\": %ld, \"reply_max\": %ld, \"samples\": %ld, "
           "\"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, \"p999_us\": %.2f, "
           "\"max_us\": %.2f, \"cpu\": %.4f, \"busy\": %.4f}\n",
           cfg.closed ? "closed" : "open", cfg.closed ? cfg.inflight : 0,
           cfg.closed ? 0.0 : cfg.rate, cfg.sources, seconds, sentMeasured, receivedMeasured,
           lostMeasured, stray, bad, sendErrors, receivedMeasured / seconds, minReply, maxReply,
           nsamples, percentile(50), percentile(90), percentile(99), percentile(99.9),
           nsamples ? samples[nsamples - 1] / 1000.0 : -1.0, cpu / seconds,
           cfg.spin ? (double)busyNs / 1e9 / seconds : cpu / seconds);
    return 0;
}
