//! Connections from the node itself to a host port (at a node address or at
//! 127.0.0.1): cgroup socket-address hooks rewrite the socket's destination
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
    to_pod(&ctx);
    PROCEED
}

#[cgroup_sock_addr(sendmsg4)]
pub fn host_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_pod(&ctx);
    PROCEED
}

#[cgroup_sock_addr(recvmsg4)]
pub fn host_recvmsg4(ctx: SockAddrContext) -> i32 {
    from_pod_as_host_port(&ctx);
    PROCEED
}

fn in_node_netns(ctx: &SockAddrContext) -> bool {
    let Some(cfg) = NODE_CONFIG.get(0) else {
        return false;
    };
    // SAFETY: plain helper call on the program's context.
    cfg.netns_cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == cfg.netns_cookie
}

/// A destination that is a host port of this node becomes the pod behind it.
fn to_pod(ctx: &SockAddrContext) {
    if !in_node_netns(ctx) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context is valid for the whole program run.
    let (ip, port, proto) =
        unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).protocol as u8) };
    let octets = ip.to_ne_bytes();
    let loopback = octets[0] == 127;
    if !loopback && NODE_ADDRS.get_ptr(&IpKey::v4(octets)).is_none() {
        return;
    }
    let mut key = HostPortKey {
        host_addr: IpKey::v4(octets).addr,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    let specific = if loopback {
        None
    } else {
        unsafe { HOST_PORTS.get(&key) }.copied()
    };
    let target = specific.or_else(|| {
        key.host_addr = [0; 16];
        // SAFETY: copied out at once.
        unsafe { HOST_PORTS.get(&key) }.copied()
    });
    if let Some(target) = target {
        if proto == IPPROTO_UDP {
            // Answers must show where the socket sent to, which no table
            // of the pod port alone can tell (a node address or 127.0.0.1).
            let sent_to = HostPortKey {
                host_addr: IpKey::v4(octets).addr,
                port,
                proto,
                _pad: 0,
            };
            // Should the insert fail, answers show the mapping's address.
            let _ = HOST_PORT_SOCK.insert(
                &socket_key(ctx, &target.pod_addr, target.pod_port),
                &sent_to,
                0,
            );
        }
        // SAFETY: both fields are writable in connect4 and sendmsg4.
        unsafe {
            (*sa).user_ip4 = u32::from_ne_bytes(v4(&target.pod_addr));
            (*sa).user_port = u32::from(target.pod_port);
        }
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
fn from_pod_as_host_port(ctx: &SockAddrContext) {
    if !in_node_netns(ctx) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context is valid for the whole program run.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    let pod_addr = IpKey::v4(ip.to_ne_bytes()).addr;
    // SAFETY: copied out at once.
    let Some(sent_to) = unsafe { HOST_PORT_SOCK.get(&socket_key(ctx, &pod_addr, port)) }.copied()
    else {
        return;
    };
    // SAFETY: both fields are writable in recvmsg4.
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes(v4(&sent_to.host_addr));
        (*sa).user_port = u32::from(sent_to.port);
    }
}
