//! Deleting links DEL retired without waiting for the kernel.
//!
//! Deleting a veth costs its caller the unregistration (an RCU barrier once
//! the device is gone: 15–30 ms on this machine kind), and the netlink
//! request is carried out inside the sender's `sendmsg`, so no request can
//! leave it to the kernel. DEL therefore retires the link first (down and
//! renamed, [`crate::netlink::Netlink::retire_link`]: nothing routes to it
//! and its name is free), and a forked child sends the deletion and exits
//! while DEL returns. GC deletes any tombstone a child did not get to.

use std::{io, os::fd::AsRawFd};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{RouteNetlinkMessage, link::LinkMessage};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

/// `RTM_DELLINK` of `ifindex`, serialized (no acknowledgement asked: the
/// child exits without reading).
fn del_link_request(ifindex: u32) -> Vec<u8> {
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::DelLink(link)),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    buf
}

/// Deletes the links `ifindexes` of the calling thread's namespace from a
/// child process, and returns at once. The child keeps only its netlink
/// socket (the runtime's pipes and the plugin's locks close first), and
/// between `fork` and `_exit` makes system calls only: everything it sends
/// is built before.
pub fn delete_links_in_background(ifindexes: &[u32]) -> io::Result<()> {
    let requests: Vec<Vec<u8>> = ifindexes.iter().map(|i| del_link_request(*i)).collect();
    let socket = Socket::new(NETLINK_ROUTE)?;
    let fd = socket.as_raw_fd();
    // SAFETY: the child runs only async-signal-safe system calls on memory
    // that exists before the fork, then `_exit`s.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => unsafe {
            if fd > 0 {
                libc::syscall(libc::SYS_close_range, 0u32, (fd - 1) as u32, 0u32);
            }
            libc::syscall(libc::SYS_close_range, (fd + 1) as u32, u32::MAX, 0u32);
            libc::setsid();
            for request in &requests {
                libc::send(fd, request.as_ptr().cast(), request.len(), 0);
            }
            libc::_exit(0)
        },
        _ => Ok(()),
    }
}
