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
 * bytes are dropped from then on, and userspace resets the session.
 *
 * Memory: the kernel queues a redirected skb on the peer's psock without charging it to either
 * socket, so a peer that takes bytes slower than its partner sends them (a server that stops
 * reading, or just a send path slower than the receive path) would let that queue grow without
 * bound. The program computes how many bytes it handed on that the peer's send queue has not
 * taken yet; past BACKLOG_LIMIT it tells userspace once (the `spills` ring buffer), which takes
 * the session out of the kernel path and finishes it in userspace, under TCP's own
 * backpressure. */

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

/* Per receiving socket (key: its cookie), written by userspace at insertion. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct flow);
} flows SEC(".maps");

/* Cookies of sockets whose peer fell BACKLOG_LIMIT behind. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} spills SEC(".maps");

/* The fields of the kernel's struct tcp_sock the program reads, relocated by name and type
 * against the running kernel's BTF (CO-RE). copied_seq is the sequence number of the next byte
 * the stream consumes: while the program runs on an skb, that is where the skb should start. */
struct tcp_sock {
	__u32 rcv_nxt;
	__u32 copied_seq;
	__u32 snd_una;
	__u32 write_seq;
	__u64 bytes_received;
	__u64 bytes_acked;
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

/* Tells userspace (once) when the bytes this socket handed on exceed what its peer's send queue
 * took by more than BACKLOG_LIMIT. */
static __always_inline void watch(struct __sk_buff *skb, __u64 *cookie)
{
	struct flow *f = bpf_map_lookup_elem(&flows, cookie);
	struct bpf_sock *sk = skb->sk, *peer;
	struct tcp_sock *tp, *pt;
	__u64 consumed, written;

	if (!f || f->spilled || !sk)
		return;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	peer = bpf_map_lookup_elem(&peers, cookie);
	if (!peer)
		return;
	pt = bpf_skc_to_tcp_sock(peer);
	if (pt) {
		/* Received and consumed (everything consumed was handed on), against what the
		 * peer's send queue ever took (acknowledged plus still queued). */
		consumed = tp->bytes_received - (__u32)(tp->rcv_nxt - tp->copied_seq);
		written = pt->bytes_acked + (__u32)(pt->write_seq - pt->snd_una);
		if (consumed > written - f->base + BACKLOG_LIMIT &&
		    !bpf_ringbuf_output(&spills, cookie, sizeof(*cookie), BPF_RB_FORCE_WAKEUP))
			f->spilled = 1;
	}
	bpf_sk_release(peer);
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

	watch(skb, &cookie);
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
