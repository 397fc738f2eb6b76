//! An XDP program that is not the datapath's, as an operator might attach
//! to the uplink on purpose: two instructions (`return XDP_PASS`) loaded
//! and attached through raw `bpf(2)` calls (no object file needed). Its
//! link holds it on the device until this value drops.

use std::{io, os::fd::OwnedFd};

use crate::{
    netns::Netns,
    raw_bpf::{self, ATTACH_XDP, Insn, PROG_TYPE_XDP},
};

/// The name the kernel keeps for the program.
pub const NAME: &str = "operator_xdp";

const XDP_PASS: i32 = 2;

/// `operator_xdp` attached to a device (native mode where the driver has
/// it, as `ip link set dev X xdp` does).
pub struct ForeignXdp {
    _program: OwnedFd,
    _link: OwnedFd,
}

impl ForeignXdp {
    /// Attaches `operator_xdp` to `ifname` in `ns`.
    pub fn attach(ns: &Netns, ifname: &str) -> io::Result<Self> {
        let ifname = ifname.to_owned();
        ns.run(move || {
            let ifindex = nix::net::if_::if_nametoindex(ifname.as_str())?;
            let program = raw_bpf::load(
                PROG_TYPE_XDP,
                ATTACH_XDP,
                NAME,
                &[Insn::mov64_imm(0, XDP_PASS), Insn::exit()],
            )?;
            let link = raw_bpf::link(&program, ifindex, ATTACH_XDP)?;
            Ok(Self {
                _program: program,
                _link: link,
            })
        })
    }
}
