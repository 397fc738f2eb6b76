//! The cls_bpf filters on a device's clsact hooks, with the id and name of
//! the program each runs: a synchronous netlink dump. (aya finds filters by
//! name only internally and reports no program ids; the plugin's rtnetlink
//! is async. This uses the same netlink-packet crates without a runtime.)

use std::io;

use aya::programs::TcAttachType;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// One BPF filter as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfFilter {
    pub ifindex: u32,
    pub hook: Hook,
    pub priority: u16,
    pub handle: u32,
    pub program_id: u32,
    pub program_name: String,
}

/// The clsact hook a filter sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    pub const fn attach_type(self) -> TcAttachType {
        match self {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }

    const fn parent(self) -> TcHandle {
        TcHandle {
            major: 0xffff,
            minor: match self {
                Hook::Ingress => TcHandle::MIN_INGRESS,
                Hook::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }
}

/// The BPF filters on `hook` of the device `ifindex` (none when it has no
/// clsact qdisc), in the order the kernel runs them.
pub fn bpf_filters(ifindex: u32, hook: Hook) -> io::Result<Vec<BpfFilter>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;

    let mut request = TcMessage::with_index(ifindex as i32);
    request.header.parent = hook.parent();
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetTrafficFilter(request)),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut filters = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(filters),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        // No clsact qdisc on the device, or the device went
                        // away since it was listed: no filters.
                        Some(code)
                            if [libc::EINVAL, libc::ENOENT, libc::ENODEV]
                                .contains(&-code.get()) =>
                        {
                            Ok(filters)
                        }
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        None => Ok(filters),
                    };
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(msg)) => {
                    if let Some(filter) = bpf_filter(&msg, hook) {
                        filters.push(filter);
                    }
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

fn bpf_filter(msg: &TcMessage, hook: Hook) -> Option<BpfFilter> {
    let mut program_id = None;
    let mut program_name = String::new();
    for attribute in &msg.attributes {
        if let TcAttribute::Options(options) = attribute {
            for option in options {
                match option {
                    TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => program_id = Some(*id),
                    TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => {
                        program_name = name.clone();
                    }
                    _ => {}
                }
            }
        }
    }
    Some(BpfFilter {
        ifindex: msg.header.index as u32,
        hook,
        // `info` holds the priority in its upper half, the protocol below.
        priority: (msg.header.info >> 16) as u16,
        handle: u32::from(msg.header.handle),
        program_id: program_id?,
        program_name,
    })
}
