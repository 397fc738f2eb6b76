//! Connections from the node itself to a host port (at a node address or at
//! 127.0.0.1 / ::1), IPv4 and IPv6: cgroup socket-address hooks rewrite the socket's destination
//! to the pod before any packet exists, so no `route_localnet` and no NAT of
//! loopback traffic is needed. Only sockets in the node's network namespace
//! are touched.

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use cni_ebpf_common::{HostPortKey, HostPortSockKey, IPPROTO_UDP, IpKey};

use crate::headers::v4;
use crate::maps::{HOST_PORT_SOCK, HOST_PORTS, NODE_ADDRS, NODE_CONFIG};

/// Verdict of a sock_addr hook that lets the call go on.
const PROCEED: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn host_connect4(ctx: SockAddrContext) -> i32 {
    to_pod::<false>(&ctx);
    PROCEED
}

#[cgroup_sock_addr(sendmsg4)]
pub fn host_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_pod::<false>(&ctx);
    PROCEED
}

#[cgroup_sock_addr(recvmsg4)]
pub fn host_recvmsg4(ctx: SockAddrContext) -> i32 {
    from_pod_as_host_port::<false>(&ctx);
    PROCEED
}

#[cgroup_sock_addr(connect6)]
pub fn host_connect6(ctx: SockAddrContext) -> i32 {
    to_pod::<true>(&ctx);
    PROCEED
}

#[cgroup_sock_addr(sendmsg6)]
pub fn host_sendmsg6(ctx: SockAddrContext) -> i32 {
    to_pod::<true>(&ctx);
    PROCEED
}

#[cgroup_sock_addr(recvmsg6)]
pub fn host_recvmsg6(ctx: SockAddrContext) -> i32 {
    from_pod_as_host_port::<true>(&ctx);
    PROCEED
}

fn in_node_netns(ctx: &SockAddrContext) -> bool {
    let Some(cfg) = NODE_CONFIG.get(0) else {
        return false;
    };
    // SAFETY: plain helper call on the program's context.
    cfg.netns_cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == cfg.netns_cookie
}

/// The socket address as a map key: an IPv4 hook's address IPv4-mapped,
/// an IPv6 hook's as it is (an IPv6 socket reaching an IPv4 address uses
/// the IPv4-mapped form, which is then the IPv4 key already).
#[inline(always)]
fn user_addr<const V6: bool>(ctx: &SockAddrContext) -> [u8; 16] {
    let sa = ctx.sock_addr;
    if V6 {
        let mut addr = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            // SAFETY: the context is valid for the whole program run; the
            // verifier takes `user_ip6` in 4-byte loads.
            let word = unsafe { core::ptr::read_volatile(&raw const (*sa).user_ip6[i]) };
            let [a, b, c, d] = word.to_ne_bytes();
            addr[i * 4] = a;
            addr[i * 4 + 1] = b;
            addr[i * 4 + 2] = c;
            addr[i * 4 + 3] = d;
            i += 1;
        }
        addr
    } else {
        // SAFETY: as above.
        IpKey::v4(unsafe { (*sa).user_ip4 }.to_ne_bytes()).addr
    }
}

#[inline(always)]
fn set_user_addr<const V6: bool>(ctx: &SockAddrContext, addr: &[u8; 16], port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: address and port are writable in connect, sendmsg and
    // recvmsg hooks; IPv6 ones take 4-byte stores.
    unsafe {
        if V6 {
            let mut i = 0;
            while i < 4 {
                (*sa).user_ip6[i] = u32::from_ne_bytes([
                    addr[i * 4],
                    addr[i * 4 + 1],
                    addr[i * 4 + 2],
                    addr[i * 4 + 3],
                ]);
                i += 1;
            }
        } else {
            (*sa).user_ip4 = u32::from_ne_bytes(v4(addr));
        }
        (*sa).user_port = u32::from(port);
    }
}

/// The loopback addresses of both families: a host port there is one
/// published on every address (`127.0.0.0/8`, `::1`).
#[inline(always)]
fn loopback(addr: &[u8; 16]) -> bool {
    let key = IpKey { addr: *addr };
    match key.as_v4() {
        Some(octets) => octets[0] == 127,
        None => {
            let mut one = [0u8; 16];
            one[15] = 1;
            *addr == one
        }
    }
}

/// A destination that is a host port of this node becomes the pod behind it.
fn to_pod<const V6: bool>(ctx: &SockAddrContext) {
    if !in_node_netns(ctx) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context is valid for the whole program run.
    let (port, proto) = unsafe { ((*sa).user_port as u16, (*sa).protocol as u8) };
    let addr = user_addr::<V6>(ctx);
    let loopback = loopback(&addr);
    if !loopback && NODE_ADDRS.get_ptr(&IpKey { addr }).is_none() {
        return;
    }
    let key = HostPortKey {
        host_addr: addr,
        port,
        proto,
        wildcard: 0,
    };
    // SAFETY: copied out at once.
    let specific = if loopback {
        None
    } else {
        unsafe { HOST_PORTS.get(&key) }.copied()
    };
    let target = specific.or_else(|| {
        let v6_family = IpKey { addr }.as_v4().is_none();
        // SAFETY: copied out at once.
        unsafe { HOST_PORTS.get(&HostPortKey::any(v6_family, port, proto)) }.copied()
    });
    if let Some(target) = target {
        if proto == IPPROTO_UDP {
            // Answers must show where the socket sent to, which no table
            // of the pod port alone can tell (a node address or loopback).
            // Should the insert fail, answers show the mapping's address.
            let _ =
                HOST_PORT_SOCK.insert(&socket_key(ctx, &target.pod_addr, target.pod_port), &key, 0);
        }
        set_user_addr::<V6>(ctx, &target.pod_addr, target.pod_port);
    }
}

/// This socket's entry in `HOST_PORT_SOCK` for the pod port `addr:port`.
#[inline(always)]
fn socket_key(ctx: &SockAddrContext, addr: &[u8; 16], port: u16) -> HostPortSockKey {
    HostPortSockKey {
        // SAFETY: plain helper call on the program's context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        pod_addr: *addr,
        pod_port: port,
        _pad: [0; 6],
    }
}

/// A datagram from a pod port this socket reached through a host port shows
/// as coming from the host address and port it sent to. Answers to sockets
/// that talk to the pod's own address stay as they are.
fn from_pod_as_host_port<const V6: bool>(ctx: &SockAddrContext) {
    if !in_node_netns(ctx) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context is valid for the whole program run.
    let port = unsafe { (*sa).user_port as u16 };
    let pod_addr = user_addr::<V6>(ctx);
    // SAFETY: copied out at once.
    let Some(sent_to) = unsafe { HOST_PORT_SOCK.get(&socket_key(ctx, &pod_addr, port)) }.copied()
    else {
        return;
    };
    set_user_addr::<V6>(ctx, &sent_to.host_addr, sent_to.port);
}
