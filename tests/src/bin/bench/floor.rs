//! `floor`: the least any datapath built on veth pairs and tc can do for
//! pod ↔ pod. Each pod's veth goes to a node namespace, as with every
//! plugin, and the host end runs a four-instruction program that calls
//! `bpf_redirect_peer` to the other pod's host veth: no map, no check, no
//! counter, no rewrite (the pods hold a permanent neighbour entry for each
//! other with their own host veth's MAC, so the frame needs none). What
//! `floor` adds to `limit` is the second hop's price (one more pass through
//! the receive path and the tc hook); what `cni-ebpf` adds to `floor` is
//! what its program does.
//!
//! The program is assembled and loaded here with the `bpf` system call:
//! it is four instructions with the target's ifindex as an immediate, and
//! aya loads programs from an object file only. It is attached through tcx
//! (a link held open by the pair): cheaper than clsact if anything, so the
//! floor stays a floor.

use std::{
    io,
    net::IpAddr,
    os::fd::{FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};
use cni_ebpf_tests::{
    Netns,
    veth::{self, VethEnd},
};

/// `BPF_PROG_LOAD` and `BPF_LINK_CREATE` (`linux/bpf.h`).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
/// `BPF_FUNC_redirect_peer`.
const REDIRECT_PEER: i32 = 155;

/// One `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The head of `union bpf_attr` for `BPF_PROG_LOAD`, zero-padded to the
/// size the kernel reads.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u8; 64],
}

/// The head of `union bpf_attr` for `BPF_LINK_CREATE` (tcx: no relative
/// program, any revision).
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u8; 64],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, zero-padded `bpf_attr` prefix of its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `r1 = target; r2 = 0; r0 = bpf_redirect_peer(r1, r2); exit`.
fn load_redirect_peer(target_ifindex: u32) -> Result<OwnedFd> {
    const MOV64_IMM: u8 = 0xb7;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    let insns = [
        Insn {
            code: MOV64_IMM,
            regs: 1,
            off: 0,
            imm: target_ifindex as i32,
        },
        Insn {
            code: MOV64_IMM,
            regs: 2,
            off: 0,
            imm: 0,
        },
        Insn {
            code: CALL,
            regs: 0,
            off: 0,
            imm: REDIRECT_PEER,
        },
        Insn {
            code: EXIT,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut name = [0u8; 16];
    name[..5].copy_from_slice(b"floor");
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_TCX_INGRESS,
        _rest: [0; 64],
    };
    bpf(BPF_PROG_LOAD, &mut attr).with_context(|| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        format!(
            "loading the floor program: {}",
            String::from_utf8_lossy(&log[..end])
        )
    })
}

/// Attaches `prog` to tcx ingress of `ifindex` in the calling thread's
/// namespace; the link lives as long as the returned descriptor.
fn attach_tcx(prog: &OwnedFd, ifindex: u32) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let mut attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_TCX_INGRESS,
        flags: 0,
        _rest: [0; 64],
    };
    bpf(BPF_LINK_CREATE, &mut attr).context("attaching the floor program (tcx)")
}

/// The node namespace of a `floor` pair and the links that make it one;
/// dropping it detaches them and removes the namespace.
pub struct FloorNode {
    _links: Vec<OwnedFd>,
    _netns: Netns,
}

/// Joins `client` (addressed `client_ip`) and `server` (`server_ip`), both
/// `/prefix`, through a node namespace: a veth pair from each to the node,
/// the floor program on both host ends, and a permanent neighbour entry in
/// each pod for the other with its own host veth's MAC.
pub fn join(
    client: &Netns,
    server: &Netns,
    client_ip: IpAddr,
    server_ip: IpAddr,
    prefix: &str,
) -> Result<FloorNode> {
    let node = Netns::with_loopback("bench-floor-node");
    let ends = [
        (client, client_ip, server_ip, "fl-client"),
        (server, server_ip, client_ip, "fl-server"),
    ];
    for (pod, ip, _, host) in ends {
        let cidr = format!("{ip}/{prefix}");
        veth::add_veth(
            VethEnd {
                netns: &node,
                name: host,
                cidr: None,
            },
            VethEnd::new(pod, "eth0", &cidr),
            Some(1500),
        );
    }
    let ifindex = |name: &str| -> Result<u32> {
        node.run(|| nix::net::if_::if_nametoindex(name))
            .with_context(|| format!("ifindex of {name}"))
    };
    let (client_host, server_host) = (ifindex("fl-client")?, ifindex("fl-server")?);
    let mut links = Vec::new();
    for (from, to) in [(client_host, server_host), (server_host, client_host)] {
        let prog = load_redirect_peer(to)?;
        links.push(node.run(|| attach_tcx(&prog, from))?);
    }
    for (pod, _, other, host) in ends {
        let brief = node.ip(&["-br", "link", "show", "dev", host]);
        let mac = brief
            .split_whitespace()
            .nth(2)
            .with_context(|| format!("no MAC in {brief:?}"))?;
        pod.ip(&[
            "neigh",
            "replace",
            &other.to_string(),
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
    }
    Ok(FloorNode {
        _links: links,
        _netns: node,
    })
}
