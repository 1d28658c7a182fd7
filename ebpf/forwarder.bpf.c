// SPDX-License-Identifier: GPL-2.0
/* The sockmap data path: every skb received on a session's socket is redirected to the egress of
 * its peer, inside the kernel. Userspace puts each socket into `peers` under the cookie of the
 * *other* socket, so the lookup key is simply the receiving socket's own cookie.
 *
 * The program is attached to a second map, `hooks`, not to `peers`: userspace fills `peers` for
 * both sockets first, then puts both into `hooks`, so a socket never runs the program while its
 * peer's entry is missing (a short reply arriving with its FIN during the hand-over would
 * otherwise be left on a socket nobody reads).
 *
 * Retransmissions: when a retransmitted segment partly overlaps bytes the socket already has, TCP
 * queues it untrimmed, and a verdict program is handed the whole skb (see
 * shared/notes/sockmap-kernel.md). Redirected as is, the old bytes would reach the peer twice,
 * and the stream would stall (the kernel's copied_seq runs ahead of rcv_nxt). So before the
 * redirect, the program compares the skb's first sequence number with the socket's copied_seq
 * (the next byte the stream expects) and cuts the repeated head off. What it cannot repair (a
 * gap, an overlap it cannot cut) is never forwarded: the socket is marked in `broken`, its
 * bytes are dropped from then on, and userspace resets the session. */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "forwarder.h"

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32); /* a socket fd when updated from userspace */
} peers SEC(".maps");

/* The sockets that run the program (key: the socket's own cookie). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} hooks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct activity);
} activity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TOTAL_MAX);
	__type(key, __u32);
	__type(value, __u64);
} totals SEC(".maps");

/* Sockets whose stream could not be repaired (key: cookie; value unused). Userspace resets their
 * session and removes the entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} broken SEC(".maps");

/* The one field of the kernel's struct tcp_sock the program reads, relocated by name and type
 * against the running kernel's BTF (CO-RE): the sequence number of the next byte the stream
 * consumes. While the program runs on an skb, that is where the skb should start. */
struct tcp_sock {
	__u32 copied_seq;
} __attribute__((preserve_access_index));

/* bpf_skb_adjust_room() removes at most 4,095 bytes per call (0xfff); 17 calls cover 64 KiB,
 * more than one skb on a 64 KiB GSO/GRO path repeats. */
#define TRIM_STEP 4095
#define TRIM_CALLS 17

static __always_inline void count(__u32 which, __u64 n)
{
	__u64 *t = bpf_map_lookup_elem(&totals, &which);

	if (t)
		*t += n;
}

/* Marks the socket broken and drops the skb. */
static __always_inline int fault(__u64 *cookie)
{
	__u8 one = 1;

	bpf_map_update_elem(&broken, cookie, &one, BPF_ANY);
	count(TOTAL_FAULTS, 1);
	return SK_DROP;
}

/* What repair() made of an skb. */
enum repair {
	REPAIRED, /* it starts where the stream is (trimmed to, if it repeated bytes) */
	ALL_SEEN, /* every byte of it was forwarded already: a retransmission that also carries the
		   * FIN (TCP queues it for the FIN, which TCP itself handles) */
	BROKEN, /* it cannot be made right: the socket is gone, or it starts past the stream */
};

/* Cuts the bytes of `skb` that the stream already has off its head. */
static __always_inline enum repair repair(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	struct tcp_sock *tp;
	__u32 seq, over;
	__s32 diff;

	if (!sk)
		return BROKEN;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return BROKEN;
	/* In sk_skb programs __sk_buff.cb maps onto the head of skb->cb, which for a received
	 * TCP skb is struct tcp_skb_cb: seq first. */
	seq = skb->cb[0];
	diff = (__s32)(tp->copied_seq - seq);
	if (diff == 0)
		return REPAIRED;
	if (diff < 0 || (__u32)diff > skb->len)
		return BROKEN;
	over = diff;
	count(TOTAL_TRIMMED_BYTES, over);
	if (over == skb->len)
		return ALL_SEEN;
	for (int i = 0; i < TRIM_CALLS && over > 0; i++) {
		__u32 step = over > TRIM_STEP ? TRIM_STEP : over;

		if (bpf_skb_adjust_room(skb, -(__s32)step, 0, 0))
			return BROKEN;
		over -= step;
	}
	return over ? BROKEN : REPAIRED;
}

SEC("sk_skb/stream_verdict")
int redirect(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct activity *a;
	long verdict;

	/* A bare FIN reaches the program as an empty skb. Redirected, the peer's backlog would try
	 * to send 0 bytes, take that for a broken pipe and fail the peer socket with EPIPE. The FIN
	 * itself is TCP state that userspace sees (EPOLLRDHUP) and propagates with shutdown(). */
	if (skb->len == 0)
		return SK_DROP;
	if (bpf_map_lookup_elem(&broken, &cookie))
		return SK_DROP;
	switch (repair(skb)) {
	case REPAIRED:
		break;
	case ALL_SEEN:
		return SK_DROP;
	default:
		return fault(&cookie);
	}

	verdict = bpf_sk_redirect_hash(skb, &peers, &cookie, 0);
	if (verdict != SK_PASS) {
		/* No peer (yet, or any more): keep the bytes on this socket rather than drop them. */
		count(TOTAL_PASSED_BYTES, skb->len);
		return SK_PASS;
	}
	a = bpf_map_lookup_elem(&activity, &cookie);
	if (a) {
		a->bytes += skb->len;
		a->last_ns = bpf_ktime_get_ns();
	}
	count(TOTAL_REDIRECTED_BYTES, skb->len);
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
