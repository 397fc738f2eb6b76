//! Packets as a namespace receives them, seen through a raw socket, and
//! checks of their checksums.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, sockopt};

use crate::{
    background::{Background, HOLD_LIMIT, POLL},
    netns::Netns,
    sockets::timeval,
    wait::wait_until,
};

/// A packet as a raw socket saw it arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenPacket {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The transport header and payload.
    pub l4: Vec<u8>,
}

impl SeenPacket {
    /// The big-endian 16-bit word at `index` of the transport header: for
    /// UDP 0 is the source port, 1 the destination port, 3 the checksum.
    pub fn word(&self, index: usize) -> Option<u16> {
        let bytes = self.l4.get(index * 2..index * 2 + 2)?;
        Some(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// Whether the Internet checksum over the transport bytes (as ICMP
    /// computes it) is right.
    pub fn icmp_checksum_ok(&self) -> bool {
        sums_to_ones(0, self.l4.chunks(2))
    }
}

/// Whether `udp` (header and payload, as quoted or received) carries a
/// right checksum for `src` -> `dst`, or none at all.
pub fn udp_checksum_ok(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> bool {
    let Some(len) = udp
        .get(4..6)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return false;
    };
    if udp.len() < len || len < 8 {
        return false;
    }
    if udp[6..8] == [0, 0] {
        return true;
    }
    let pseudo = [src.octets(), dst.octets()].concat();
    sums_to_ones(
        17 + len as u32,
        pseudo.chunks(2).chain(udp[..len].chunks(2)),
    )
}

/// Whether `start` plus the big-endian 16-bit words of `data` (a last odd
/// byte padded with zero) folds to all ones in one's complement, as it does
/// over data that holds its right Internet checksum.
fn sums_to_ones<'a>(start: u32, data: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut sum = start;
    for pair in data {
        sum += u32::from(u16::from_be_bytes([
            pair[0],
            pair.get(1).copied().unwrap_or(0),
        ]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// A raw IPv4 socket of one protocol in a namespace, recording a copy of
/// every packet of that protocol the namespace receives.
pub struct PacketWatch {
    seen: Arc<Mutex<Vec<SeenPacket>>>,
    _thread: Background,
}

impl PacketWatch {
    /// Watches `protocol` (ICMP or UDP) arriving in `ns`.
    pub fn start(ns: &Netns, protocol: SockProtocol) -> io::Result<Self> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (thread, ()) = {
            let seen = seen.clone();
            Background::start(
                ns,
                "watch",
                Some(HOLD_LIMIT),
                move || {
                    let fd = socket::socket(
                        AddressFamily::Inet,
                        SockType::Raw,
                        SockFlag::SOCK_CLOEXEC,
                        protocol,
                    )?;
                    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeval(POLL))?;
                    Ok((fd, ()))
                },
                move |fd, running| {
                    let mut buf = [0u8; 2048];
                    while running.go_on() {
                        let Ok(n) =
                            socket::recv(fd.as_fd().as_raw_fd(), &mut buf, MsgFlags::empty())
                        else {
                            continue;
                        };
                        if let Some(packet) = parse_ipv4(&buf[..n]) {
                            seen.lock().unwrap().push(packet);
                        }
                    }
                },
            )?
        };
        Ok(Self {
            seen,
            _thread: thread,
        })
    }

    /// Packets seen so far.
    pub fn seen(&self) -> Vec<SeenPacket> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until at least `n` packets matching `wanted` were seen, or
    /// `timeout` (the watch thread may lag behind the socket that got the
    /// same packet); returns the matching ones.
    pub fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
        wanted: impl Fn(&SeenPacket) -> bool,
    ) -> Vec<SeenPacket> {
        let matching = || -> Vec<SeenPacket> {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .filter(|p| wanted(p))
                .cloned()
                .collect()
        };
        wait_until(timeout, || matching().len() >= n);
        matching()
    }
}

fn parse_ipv4(packet: &[u8]) -> Option<SeenPacket> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let addr =
        |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    let l4 = packet.get(ihl..)?;
    Some(SeenPacket {
        src: addr(12),
        dst: addr(16),
        l4: l4.to_vec(),
    })
}

/// The kernel's GSO and GRO maximum size without BIG TCP
/// (`GSO_LEGACY_MAX_SIZE`).
pub const LEGACY_GSO_MAX: usize = 65_536;

/// A packet socket on one interface of a namespace, keeping the length of
/// every frame that crossed it either way. A GSO packet is seen whole,
/// before segmentation, so this is how large the datapath's packets were;
/// on a device that segments it in software (one whose GSO maximum it
/// exceeds), the segments are seen instead.
pub struct FrameSizes {
    sizes: Arc<Mutex<Vec<usize>>>,
    _thread: Background,
}

impl FrameSizes {
    /// Watches every frame on `ifname` in `ns`.
    pub fn start(ns: &Netns, ifname: &str) -> io::Result<Self> {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let ifname = ifname.to_owned();
        let (thread, ()) = {
            let sizes = sizes.clone();
            Background::start(
                ns,
                "frames",
                Some(HOLD_LIMIT),
                move || {
                    let fd = socket::socket(
                        AddressFamily::Packet,
                        SockType::Raw,
                        SockFlag::SOCK_CLOEXEC,
                        SockProtocol::EthAll,
                    )?;
                    let ifindex = nix::net::if_::if_nametoindex(ifname.as_str())?;
                    // nix offers no constructor for a `sockaddr_ll` to bind.
                    let addr = libc::sockaddr_ll {
                        sll_family: libc::AF_PACKET as u16,
                        sll_protocol: (libc::ETH_P_ALL as u16).to_be(),
                        sll_ifindex: ifindex as i32,
                        sll_hatype: 0,
                        sll_pkttype: 0,
                        sll_halen: 0,
                        sll_addr: [0; 8],
                    };
                    // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
                    let rc = unsafe {
                        libc::bind(
                            fd.as_raw_fd(),
                            (&raw const addr).cast(),
                            size_of::<libc::sockaddr_ll>() as u32,
                        )
                    };
                    if rc != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeval(POLL))?;
                    Ok((fd, ()))
                },
                move |fd, running| {
                    let mut buf = [0u8; 64];
                    while running.go_on() {
                        // With MSG_TRUNC a packet socket returns the frame's
                        // whole length, however little of it is copied.
                        if let Ok(n) =
                            socket::recv(fd.as_fd().as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC)
                        {
                            sizes.lock().unwrap().push(n);
                        }
                    }
                },
            )?
        };
        Ok(Self {
            sizes,
            _thread: thread,
        })
    }

    /// The largest frame seen so far, in bytes.
    pub fn largest(&self) -> usize {
        self.sizes
            .lock()
            .unwrap()
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// How many frames seen so far were larger than `bytes`.
    pub fn larger_than(&self, bytes: usize) -> usize {
        self.sizes
            .lock()
            .unwrap()
            .iter()
            .filter(|&&n| n > bytes)
            .count()
    }

    /// How many frames were seen so far.
    pub fn count(&self) -> usize {
        self.sizes.lock().unwrap().len()
    }

    /// The frames seen so far, for a failure message.
    pub fn summary(&self) -> String {
        format!(
            "{} frames, largest {} bytes, {} over 64 KiB, {} over 1514 bytes",
            self.count(),
            self.largest(),
            self.larger_than(LEGACY_GSO_MAX),
            self.larger_than(1514)
        )
    }
}
