/* Layouts shared by the BPF program (forwarder.bpf.c) and the forwarder (forwarder/src/datapath/
 * sockmap.rs, #[repr(C)] twins checked by a unit test against this object's BTF-free map sizes). */
#ifndef FORWARDER_H
#define FORWARDER_H

#include <linux/types.h>

/* Value of the `activity` per-CPU hash, keyed by the socket cookie of the socket that received the
 * bytes: what the verdict program redirected from that socket, and when it last did. */
struct activity {
	__u64 bytes;
	__u64 last_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
};

/* Value of the `flows` hash, keyed by the cookie of the socket that receives the bytes. */
struct flow {
	__u64 base; /* what the peer's send queue had taken before the session was inserted */
};

/* Bytes one direction may have handed on beyond what the peer's send queue took. */
#define BACKLOG_LIMIT (64ull << 20)

/* Value of the `broken` hash: why the socket's bytes are dropped. */
enum broken {
	BROKEN_UNREPAIRABLE = 1, /* a retransmitted skb the program could not repair */
	BROKEN_OVERFLOW = 2, /* its peer fell BACKLOG_LIMIT behind */
};

/* Index of the `totals` per-CPU array. */
enum total {
	TOTAL_REDIRECTED_BYTES = 0,
	TOTAL_PASSED_BYTES = 1, /* no peer in the map yet: left to the socket (should stay 0) */
	TOTAL_TRIMMED_BYTES = 2, /* bytes a retransmitted skb repeated, cut before the redirect */
	TOTAL_FAULTS = 3, /* skbs that could not be repaired: their session is marked broken */
	TOTAL_OVERFLOWS = 4, /* sockets whose peer fell BACKLOG_LIMIT behind: marked broken */
	TOTAL_MAX = 5,
};

#endif
