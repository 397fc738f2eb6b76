//! Sockets with options the standard library does not set: a listener
//! with a deep backlog and `SO_REUSEPORT`, a client bound to a port it
//! shares with one, UDP without checksums.

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};

pub(crate) fn timeval(duration: Duration) -> TimeVal {
    TimeVal::milliseconds(duration.as_millis() as i64)
}

/// A new TCP socket of `family`, close-on-exec.
fn tcp_socket(family: AddressFamily) -> nix::Result<OwnedFd> {
    socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
}

/// A listening TCP socket with a deep accept queue; with `reuse_port` it
/// may share its port with a connecting socket (`SO_REUSEPORT` on both).
/// Create it in the namespace it should listen in.
pub fn tcp_listen(addr: impl Into<SocketAddr>, reuse_port: bool) -> io::Result<TcpListener> {
    let addr = addr.into();
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = tcp_socket(family)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if reuse_port {
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    socket::bind(fd.as_raw_fd(), &socket::SockaddrStorage::from(addr))?;
    socket::listen(&fd, Backlog::new(1024)?)?;
    Ok(TcpListener::from(fd))
}

/// A TCP socket bound to `local` with `SO_REUSEPORT`, connected to
/// `remote`: a client that shares its port with a [`tcp_listen`]er.
pub fn tcp_connect_from(
    local: impl Into<SocketAddr>,
    remote: impl Into<SocketAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let (local, remote) = (local.into(), remote.into());
    let family = match local {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = tcp_socket(family)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::setsockopt(&fd, sockopt::SendTimeout, &timeval(timeout))?;
    socket::bind(fd.as_raw_fd(), &socket::SockaddrStorage::from(local))?;
    // A blocking connect gives up after SO_SNDTIMEO.
    socket::connect(fd.as_raw_fd(), &socket::SockaddrStorage::from(remote)).map_err(|e| {
        if e == nix::errno::Errno::EINPROGRESS {
            io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
        } else {
            io::Error::from(e)
        }
    })?;
    Ok(TcpStream::from(fd))
}

/// A UDP socket bound to `addr` (port 0 picks one) whose receives give up
/// after `read_timeout`, and the address it got.
pub fn udp_bind(
    addr: impl ToSocketAddrs,
    read_timeout: Duration,
) -> io::Result<(UdpSocket, SocketAddr)> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_read_timeout(Some(read_timeout))?;
    let addr = socket.local_addr()?;
    Ok((socket, addr))
}

/// Sets `SO_NO_CHECK`: IPv4 UDP datagrams leave without a checksum.
pub fn set_udp_no_check(socket: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and an int option of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
