/*
 * cserver: a reference time server in C for udptime's benchmark, the
 * ceiling a user-space server reaches on this machine.  It batches with
 * recvmmsg/sendmmsg and answers like the other references:
 *
 *   text: any datagram gets the UTC time in ISO 8601 with microseconds;
 *   ntp:  a mode-3 request of 48 bytes or more gets a mode-4 reply with the
 *         request's transmit timestamp as origin (others are dropped).
 *
 * Usage: cserver text|ntp PORT   (binds 127.0.0.1, prints "ready" once bound)
 * Build: cc -O2 -o cserver cserver.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define NTP_UNIX 2208988800ULL

static void putTimestamp(unsigned char *p, const struct timespec *ts) {
    uint64_t sec = (uint64_t)ts->tv_sec + NTP_UNIX;
    uint64_t frac = ((uint64_t)ts->tv_nsec << 32) / 1000000000ULL;
    uint64_t v = (sec << 32) | (frac & 0xFFFFFFFFULL);
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (56 - 8 * i));
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: cserver text|ntp PORT\n");
        return 2;
    }
    int ntp = strcmp(argv[1], "ntp") == 0;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)atoi(argv[2]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
        perror("bind");
        return 2;
    }
    printf("ready\n");
    fflush(stdout);

    static struct mmsghdr in[BATCH], out[BATCH];
    static struct iovec iniov[BATCH], outiov[BATCH];
    static unsigned char inbuf[BATCH][2048], outbuf[BATCH][64];
    static struct sockaddr_in from[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iniov[i].iov_base = inbuf[i];
            iniov[i].iov_len = sizeof(inbuf[i]);
            memset(&in[i].msg_hdr, 0, sizeof(in[i].msg_hdr));
            in[i].msg_hdr.msg_name = &from[i];
            in[i].msg_hdr.msg_namelen = sizeof(from[i]);
            in[i].msg_hdr.msg_iov = &iniov[i];
            in[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(s, in, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("recvmmsg");
            return 1;
        }
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        int m = 0;
        for (int i = 0; i < n; i++) {
            unsigned char *req = inbuf[i], *rep = outbuf[m];
            size_t len;
            if (ntp) {
                if (in[i].msg_len < 48 || (req[0] & 7) != 3) continue;
                memset(rep, 0, 48);
                rep[0] = (unsigned char)((req[0] & 0x38) | 4);
                rep[1] = 1;
                rep[2] = req[2];
                rep[3] = (unsigned char)-20;
                memcpy(rep + 12, "LOCL", 4);
                putTimestamp(rep + 16, &now);
                memcpy(rep + 24, req + 40, 8);
                putTimestamp(rep + 32, &now);
                struct timespec tx;
                clock_gettime(CLOCK_REALTIME, &tx);
                putTimestamp(rep + 40, &tx);
                len = 48;
            } else {
                struct tm tm;
                gmtime_r(&now.tv_sec, &tm);
                len = (size_t)snprintf((char *)rep, 64,
                                       "%04d-%02d-%02dT%02d:%02d:%02d.%06ld+00:00\n",
                                       tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                                       tm.tm_hour, tm.tm_min, tm.tm_sec, now.tv_nsec / 1000);
            }
            outiov[m].iov_base = rep;
            outiov[m].iov_len = len;
            memset(&out[m].msg_hdr, 0, sizeof(out[m].msg_hdr));
            out[m].msg_hdr.msg_name = &from[i];
            out[m].msg_hdr.msg_namelen = in[i].msg_hdr.msg_namelen;
            out[m].msg_hdr.msg_iov = &outiov[m];
            out[m].msg_hdr.msg_iovlen = 1;
            m++;
        }
        int done = 0;
        while (done < m) {
            int r = sendmmsg(s, out + done, (unsigned)(m - done), 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                done++; /* drop one, as a full buffer would */
                continue;
            }
            done += r;
        }
    }
}
