//! The node's own sockets, as the datapath's socket lookups
//! (`bpf_skc_lookup_tcp`, `bpf_sk_lookup_udp`) see them. Under test_run a
//! tc program runs in the calling thread's network namespace (the packet
//! comes in on its `lo`, ifindex 1 as pod A's host veth), so a test runs on
//! a thread of its own in a fresh namespace, where the node's and the
//! remote host's addresses sit on `lo` and the test's sockets are the
//! node's. The namespace is the thread's alone and goes with it: nothing is
//! added to the machine's own namespace, and no packet leaves `lo`.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    thread,
};

use nix::{
    sched::{CloneFlags, unshare},
    sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage},
};

/// Runs `test` on a thread in a new network namespace whose `lo` is up
/// and holds `addrs`; a failed assertion in it fails the caller.
pub fn in_own_netns<T: Send>(addrs: &[IpAddr], test: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        let thread = scope.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            // `ip` inherits the thread's namespace.
            ip(&["link", "set", "lo", "up"]);
            for addr in addrs {
                let (prefix, dad) = match addr {
                    IpAddr::V4(_) => (32, None),
                    IpAddr::V6(_) => (128, Some("nodad")),
                };
                let addr = format!("{addr}/{prefix}");
                let mut args = vec!["addr", "add", addr.as_str(), "dev", "lo"];
                args.extend(dad);
                ip(&args);
            }
            test()
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(status.success(), "ip {args:?}: {status}");
}

/// An established TCP connection from `local` to `remote` (both on `lo`):
/// the node's end and the remote's accepted end.
pub fn tcp_connection(local: SocketAddr, remote: SocketAddr) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind(remote).expect("listening at the remote address");
    let family = match local {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .expect("a TCP socket");
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(local)).expect("binding the node's end");
    socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(remote)).expect("connecting");
    let (accepted, peer) = listener.accept().expect("accepting");
    assert_eq!(peer, local);
    (TcpStream::from(fd), accepted)
}

/// A UDP socket at `local` connected to `remote`.
pub fn udp_connected(local: SocketAddr, remote: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind(local).expect("binding the node's UDP socket");
    socket.connect(remote).expect("connecting the UDP socket");
    socket
}
