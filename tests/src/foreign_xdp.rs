//! An XDP program that is not the datapath's, as an operator might attach
//! to the uplink on purpose: two instructions (`return XDP_PASS`) loaded
//! and attached through raw `bpf(2)` calls (no object file needed). Its
//! link holds it on the device until this value drops.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::netns::Netns;

/// The name the kernel keeps for the program.
pub const NAME: &str = "operator_xdp";

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`'s `BPF_XDP`.
const BPF_XDP: u32 = 37;
const XDP_PASS: u8 = 2;

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
            let program = load()?;
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
            attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
            attr[8..12].copy_from_slice(&BPF_XDP.to_ne_bytes());
            let link = bpf(BPF_LINK_CREATE, &mut attr)?;
            Ok(Self {
                _program: program,
                _link: link,
            })
        })
    }
}

fn load() -> io::Result<OwnedFd> {
    // r0 = XDP_PASS; exit
    let insns: [u8; 16] = [0xb7, 0, 0, 0, XDP_PASS, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..48 + NAME.len()].copy_from_slice(NAME.as_bytes());
    attr[68..72].copy_from_slice(&BPF_XDP.to_ne_bytes());
    bpf(BPF_PROG_LOAD, &mut attr)
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zeroed `union bpf_attr` prefix of the size
    // passed, and every pointer in it outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
