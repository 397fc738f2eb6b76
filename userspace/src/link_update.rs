//! Replacing the program under a pinned BPF link in one step
//! (`BPF_LINK_UPDATE`): tcx links of endpoints and the uplink, cgroup links
//! of the socket hooks. The kernel swaps the program pointer atomically, so
//! no packet or socket call sees the hook empty.
//!
//! Two raw bpf(2) calls rather than aya: aya 0.14 issues `BPF_LINK_UPDATE`
//! only inside `SchedClassifier::attach_to_link` (tcx) and XDP, has no
//! equivalent for cgroup links, and exposes no file descriptor of an
//! `FdLink` to do it with. The command numbers come from aya-obj's
//! generated kernel bindings.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya_obj::generated::bpf_cmd;

/// `bpf_attr` for `BPF_OBJ_GET`. The kernel refuses (EINVAL) an attribute
/// whose bytes past the last field are not zero, so the tail padding is an
/// explicit, zeroed field.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _padding: u32,
}

const _: () = assert!(size_of::<ObjGetAttr>() == 24);
const _: () = assert!(size_of::<LinkUpdateAttr>() == 16);

/// `bpf_attr` for `BPF_LINK_UPDATE`.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf<T>(cmd: bpf_cmd, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live `bpf_attr` variant of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens the BPF object pinned at `pin`.
fn obj_get(pin: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes the link pinned at `pin` run `program` instead of its current one.
pub fn update_pinned_link(pin: &Path, program: impl AsFd) -> io::Result<()> {
    let link = obj_get(pin)?;
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
}
