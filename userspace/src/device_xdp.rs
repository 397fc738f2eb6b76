//! The XDP program a device runs, as the kernel reports it: a synchronous
//! `RTM_GETLINK` (the same netlink-packet crates as `tc_filters`, without a
//! runtime). A pinned XDP link does not say whether it is still attached
//! (aya reports no ifindex for it), so the device is asked.

use std::io;

use aya::programs::loaded_programs;
use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The id of the XDP program attached to the device `ifindex` (any mode),
/// `None` when it runs none or is gone.
pub fn program_id(ifindex: u32) -> io::Result<Option<u32>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;

    let mut request = LinkMessage::default();
    request.header.index = ifindex;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(request)),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let (data, _) = socket.recv_from_full()?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Ok(xdp_program(&link)),
        NetlinkPayload::Error(e) => match e.code {
            Some(code) if -code.get() == libc::ENODEV => Ok(None),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

fn xdp_program(link: &LinkMessage) -> Option<u32> {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
                LinkXdp::ProgId(id) | LinkXdp::DrvProgId(id) | LinkXdp::SkbProgId(id)
                    if *id != 0 =>
                {
                    Some(*id)
                }
                _ => None,
            }),
            _ => None,
        })
}

/// The name of the loaded program `id` (as the kernel keeps it: at most 15
/// bytes), `None` when it is gone.
pub fn program_name(id: u32) -> Option<String> {
    loaded_programs()
        .filter_map(std::result::Result::ok)
        .find(|p| p.id() == id)
        .map(|p| p.name_as_str().unwrap_or_default().to_string())
}
