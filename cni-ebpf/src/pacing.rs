//! TCP pacing for rate-limited pods: a `sock_ops` program on the node's
//! cgroup root caps the pacing rate (`SO_MAX_PACING_RATE`, which also turns
//! on the kernel's internal TCP pacing, no `fq` needed) of every TCP socket
//! on this node whose traffic a limit will police: the sockets of a limited
//! pod (its egress rate) and those of the node or any of its pods talking to
//! a limited pod (that pod's ingress rate).
//!
//! Why: the policer in `rate` keeps no queue, and at pod-to-pod round trips
//! of ~50 µs a window of two segments is already hundreds of Mbit/s, so an
//! unpaced sender overruns any lower limit, loses whole windows and sits out
//! retransmission timeouts (measured: 63–71 % of the limit). A sender paced
//! just under the limit never meets the policer, which stays the hard limit
//! for UDP, for other transports and for senders off this node.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_netns_cookie, bpf_setsockopt},
    macros::sock_ops,
    programs::SockOpsContext,
};
use cni_ebpf_common::{ENDPOINT_F_RATE_LIMITED, Endpoint, IpKey};

use crate::{
    maps::{ENDPOINTS, NODE_CONFIG, RATE_LIMITS},
    rate::{SEGMENT_OVERHEAD, Way},
};

const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// An IPv6 header is 20 bytes longer than an IPv4 one.
const IPV6_EXTRA_OVERHEAD: u32 = 20;
const SOL_SOCKET: i32 = 1;
const SO_MAX_PACING_RATE: i32 = 47;

#[sock_ops]
pub fn pace_tcp(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        pace(&ctx);
    }
    1
}

/// An IPv6 socket's address as a map key (an IPv4-mapped one, as an IPv6
/// socket talking IPv4 holds, is the IPv4 key already).
#[inline(always)]
fn key6(words: [u32; 4]) -> IpKey {
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let [a, b, c, d] = words[i].to_ne_bytes();
        addr[i * 4] = a;
        addr[i * 4 + 1] = b;
        addr[i * 4 + 2] = c;
        addr[i * 4 + 3] = d;
        i += 1;
    }
    IpKey { addr }
}

/// The socket's addresses as map keys. Every field is loaded, each straight
/// from the context, before the family picks the values: the verifier
/// refuses a load through a context pointer with an offset added, which a
/// field address chosen by a branch would be.
#[inline(always)]
fn addresses(ctx: &SockOpsContext, family: u32) -> Option<(IpKey, IpKey)> {
    let ops = ctx.ops;
    // SAFETY: the context is valid for the whole program run; each read is
    // one 4-byte context load.
    let (local4, remote4, local6, remote6) = unsafe {
        (
            read_volatile(&raw const (*ops).local_ip4),
            read_volatile(&raw const (*ops).remote_ip4),
            [
                read_volatile(&raw const (*ops).local_ip6[0]),
                read_volatile(&raw const (*ops).local_ip6[1]),
                read_volatile(&raw const (*ops).local_ip6[2]),
                read_volatile(&raw const (*ops).local_ip6[3]),
            ],
            [
                read_volatile(&raw const (*ops).remote_ip6[0]),
                read_volatile(&raw const (*ops).remote_ip6[1]),
                read_volatile(&raw const (*ops).remote_ip6[2]),
                read_volatile(&raw const (*ops).remote_ip6[3]),
            ],
        )
    };
    match family {
        AF_INET => Some((
            IpKey::v4(local4.to_ne_bytes()),
            IpKey::v4(remote4.to_ne_bytes()),
        )),
        AF_INET6 => Some((key6(local6), key6(remote6))),
        _ => None,
    }
}

fn pace(ctx: &SockOpsContext) {
    let family = ctx.family();
    let Some((local_key, remote_key)) = addresses(ctx, family) else {
        return;
    };
    // SAFETY: plain helper call on the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let local = ENDPOINTS.get_ptr(&local_key);
    // SAFETY: live map values.
    let local = local
        .map(|e| unsafe { &*e })
        .filter(|e| e.netns_cookie == netns);
    let mut rate = u64::MAX;
    if let Some(pod) = local {
        rate = rate.min(limit(pod, Way::Egress));
    }
    let on_node = local.is_some()
        || NODE_CONFIG
            .get(0)
            .is_some_and(|cfg| cfg.netns_cookie != 0 && cfg.netns_cookie == netns);
    if on_node && let Some(peer) = ENDPOINTS.get_ptr(&remote_key) {
        // SAFETY: a live map value.
        rate = rate.min(limit(unsafe { &*peer }, Way::Ingress));
    }
    if rate == u64::MAX {
        return;
    }
    // The pacing rate counts payload; the policer counts whole frames.
    // SAFETY: the context is valid for the whole program run.
    let mss = u64::from(unsafe { (*ctx.ops).mss_cache }).max(536);
    let overhead = if family == AF_INET6 && local_key.as_v4().is_none() {
        SEGMENT_OVERHEAD + IPV6_EXTRA_OVERHEAD
    } else {
        SEGMENT_OVERHEAD
    };
    let payload = rate * mss / (mss + u64::from(overhead));
    // The option is an int: ~0U would mean "no limit".
    let mut value = payload.min(u64::from(u32::MAX - 1)).max(1) as u32;
    // SAFETY: `value` outlives the call and its size is passed.
    unsafe {
        bpf_setsockopt(
            ctx.as_ptr(),
            SOL_SOCKET,
            SO_MAX_PACING_RATE,
            (&raw mut value).cast(),
            size_of::<u32>() as i32,
        );
    }
}

/// The endpoint's limit in `way`, bytes per second; `u64::MAX` for none.
fn limit(endpoint: &Endpoint, way: Way) -> u64 {
    if endpoint.flags & ENDPOINT_F_RATE_LIMITED == 0 {
        return u64::MAX;
    }
    let Some(limits) = (unsafe { RATE_LIMITS.get(&endpoint.owner) }) else {
        return u64::MAX;
    };
    let rate = match way {
        Way::Egress => limits.egress.bytes_per_sec,
        Way::Ingress => limits.ingress.bytes_per_sec,
    };
    if rate == 0 { u64::MAX } else { rate }
}
