/* Layouts shared by the BPF program (forwarder.bpf.c) and the forwarder (forwarder/src/datapath/
 * sockmap/, #[repr(C)] twins checked by a unit test against this object's BTF-free map sizes). */
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
	__u32 spilled; /* 1 once the program told userspace the peer fell behind */
	__u32 pad;
};

/* Bytes one direction may have handed on beyond what the peer's send queue took before the
 * program asks userspace to take the session out of the kernel path. */
#define BACKLOG_LIMIT (4u << 20)

/* Index of the `totals` per-CPU array. */
enum total {
	TOTAL_REDIRECTED_BYTES = 0,
	TOTAL_PASSED_BYTES = 1, /* no peer in the map yet: left to the socket (should stay 0) */
	TOTAL_TRIMMED_BYTES = 2, /* bytes a retransmitted skb repeated, cut before the redirect */
	TOTAL_FAULTS = 3, /* skbs that could not be repaired: their session is marked broken */
	TOTAL_MAX = 4,
};

#endif
