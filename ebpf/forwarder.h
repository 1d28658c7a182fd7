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

/* Index of the `totals` per-CPU array. */
enum total {
	TOTAL_REDIRECTED_BYTES = 0,
	TOTAL_PASSED_BYTES = 1, /* no peer in the map yet: left to the socket (should stay 0) */
	TOTAL_MAX = 2,
};

#endif
