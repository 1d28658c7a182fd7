// SPDX-License-Identifier: GPL-2.0
/* The sockmap data path: every skb received on a session's socket is redirected to the egress of
 * its peer, inside the kernel. Userspace puts each socket into `peers` under the cookie of the
 * *other* socket, so the lookup key is simply the receiving socket's own cookie. */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "forwarder.h"

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32); /* a socket fd when updated from userspace */
} peers SEC(".maps");

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

static __always_inline void count(__u32 which, __u64 n)
{
	__u64 *t = bpf_map_lookup_elem(&totals, &which);

	if (t)
		*t += n;
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
