//! Tiny BPF programs written as instructions and loaded with raw `bpf(2)`
//! calls, for tests and the bench (an operator's XDP program, the bench's
//! `floor`): aya loads programs from object files only, and these are a
//! handful of instructions with a constant or two.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `enum bpf_prog_type` values used here.
pub const PROG_TYPE_SCHED_CLS: u32 = 3;
pub const PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type` values used here.
pub const ATTACH_XDP: u32 = 37;
pub const ATTACH_TCX_INGRESS: u32 = 46;

/// One `struct bpf_insn`.
#[derive(Debug, Clone, Copy)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    /// `dst = imm` (64-bit move of a sign-extended 32-bit immediate).
    pub const fn mov64_imm(dst: u8, imm: i32) -> Self {
        Self {
            code: 0xb7,
            regs: dst,
            off: 0,
            imm,
        }
    }

    /// Calls helper number `helper` (`BPF_FUNC_*`).
    pub const fn call(helper: i32) -> Self {
        Self {
            code: 0x85,
            regs: 0,
            off: 0,
            imm: helper,
        }
    }

    pub const fn exit() -> Self {
        Self {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        }
    }

    fn to_bytes(self) -> [u8; 8] {
        let mut bytes = [0u8; 8];
        bytes[0] = self.code;
        bytes[1] = self.regs;
        bytes[2..4].copy_from_slice(&self.off.to_ne_bytes());
        bytes[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        bytes
    }
}

/// Loads `insns` as a GPL program of `prog_type` named `name` (at most 15
/// bytes), expecting `attach_type`; the verifier's log is in the error.
pub fn load(prog_type: u32, attach_type: u32, name: &str, insns: &[Insn]) -> io::Result<OwnedFd> {
    let code: Vec<u8> = insns.iter().flat_map(|i| i.to_bytes()).collect();
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(code.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&1u32.to_ne_bytes()); // log_level
    attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
    attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
    let name = &name.as_bytes()[..name.len().min(15)];
    attr[48..48 + name.len()].copy_from_slice(name);
    attr[68..72].copy_from_slice(&attach_type.to_ne_bytes());
    bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        io::Error::new(
            e.kind(),
            format!(
                "BPF_PROG_LOAD: {e}: {}",
                String::from_utf8_lossy(&log[..end])
            ),
        )
    })
}

/// Attaches `program` to `ifindex` (of the calling thread's namespace) as
/// `attach_type` through a link, which holds it there until the returned
/// descriptor closes.
pub fn link(program: &OwnedFd, ifindex: u32, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&attach_type.to_ne_bytes());
    bpf(BPF_LINK_CREATE, &mut attr)
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
