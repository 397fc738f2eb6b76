//! Topologies and servers for traffic that leaves a node: an `ext`
//! namespace behind the node's uplink with servers that report the peer
//! address they saw, packet watchers, two nodes joined by an underlay, and
//! readers of the masquerade table (`cni-ebpfd nat` / `gc`).

use std::{
    io::{self, Read, Write},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream,
        UdpSocket,
    },
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::socket::{
    self, AddressFamily, Backlog, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};
use serde_json::{Value, json};

use crate::{
    Bpffs, Family, Node, firewall,
    hash::{ByteStream, Fnv64},
    netns::Netns,
    node::Ext,
};

/// How long a server or client step may block.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often server threads look at their stop flag.
const POLL: Duration = Duration::from_millis(50);
/// The longest a server keeps an idle connection open.
const HOLD_LIMIT: Duration = Duration::from_secs(180);

fn timeval(duration: Duration) -> TimeVal {
    TimeVal::milliseconds(duration.as_millis() as i64)
}

/// Polls `done` every 10 ms until it holds or `timeout` passes; returns
/// whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Panics unless `node` forwards nothing itself (`ip_forward=0`) and has
/// empty iptables and nftables rulesets: the datapath alone moves traffic.
pub fn assert_node_untouched(node: &Node) {
    for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
        assert_eq!(
            node.netns().sysctl(key),
            "0",
            "{key} is on in node {}",
            node.name()
        );
    }
    assert_eq!(
        firewall::rules(node.netns()),
        Vec::<String>::new(),
        "firewall state in node {}",
        node.name()
    );
}

/// `conf` with every key of `extra` (an object) set on it.
pub fn with_keys(mut conf: Value, extra: Value) -> Value {
    let Value::Object(extra) = extra else {
        panic!("with_keys takes an object, got {extra}");
    };
    for (key, value) in extra {
        conf[key] = value;
    }
    conf
}

/// The node's default config with `ipMasq` on.
pub fn masquerade_conf(node: &Node) -> Value {
    with_keys(node.conf().build(), json!({ "ipMasq": true }))
}

/// [`Node::add_uplink`] plus a default route via the `ext` side, so the
/// plugin finds the uplink (and the masquerade address) as on a real node.
pub fn uplink_with_default_route(node: &Node) -> Ext {
    let ext = node.add_uplink();
    for via in [IpAddr::V4(ext.ext_ip), IpAddr::V6(ext.ext_ip6)] {
        node.netns().ip(&[
            Family::of(via).flag(),
            "route",
            "add",
            "default",
            "via",
            &via.to_string(),
            "dev",
            "uplink",
        ]);
    }
    ext
}

/// `conf` with `ipMasq` on.
pub fn masquerading(conf: Value) -> Value {
    with_keys(conf, json!({ "ipMasq": true }))
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
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
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
    local: SocketAddrV4,
    remote: SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::setsockopt(&fd, sockopt::SendTimeout, &timeval(timeout))?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(local))?;
    // A blocking connect gives up after SO_SNDTIMEO.
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(remote)).map_err(|e| {
        if e == nix::errno::Errno::EINPROGRESS {
            io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
        } else {
            io::Error::from(e)
        }
    })?;
    Ok(TcpStream::from(fd))
}

/// One connection a [`PeerServer`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConn {
    /// The client address as the server saw it.
    pub peer: SocketAddr,
    /// Bytes and FNV-1a hash of the stream, once the client closed it.
    pub received: Option<(u64, u64)>,
}

/// A TCP server that tells each client the address it saw it come from
/// (`"ip:port\n"`), hashes what the client sends until it shuts down its
/// side, answers `"<bytes> <hash>\n"`, and closes. A thread per connection,
/// so hundreds can be held open at once.
pub struct PeerServer {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<ServerConn>>>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
    handlers: Arc<Mutex<Vec<thread::JoinHandle<()>>>>,
}

impl PeerServer {
    /// Listens on `addr` inside `ns` (port 0 picks one).
    pub fn start(ns: &Netns, addr: impl Into<SocketAddr>) -> io::Result<Self> {
        let addr = addr.into();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handlers = Arc::new(Mutex::new(Vec::new()));
        let (bound_tx, bound_rx) = mpsc::channel();
        let accept = {
            let (conns, stop, handlers) = (conns.clone(), stop.clone(), handlers.clone());
            ns.spawn(move || {
                let listener = match tcp_listen(addr, false).and_then(|l| {
                    l.set_nonblocking(true)?;
                    Ok(l)
                }) {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                let _ = bound_tx.send(listener.local_addr());
                accept_loop(&listener, &conns, &stop, &handlers);
            })
        };
        let addr = bound_rx
            .recv_timeout(IO_TIMEOUT)
            .map_err(|_| io::Error::other("server thread did not start"))??;
        Ok(Self {
            addr,
            conns,
            stop,
            accept: Some(accept),
            handlers,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every connection accepted so far.
    pub fn conns(&self) -> Vec<ServerConn> {
        self.conns.lock().unwrap().clone()
    }

    /// Waits until `n` connections were accepted, or `timeout`.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.conns.lock().unwrap().len() >= n)
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for handler in self.handlers.lock().unwrap().drain(..) {
            let _ = handler.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    conns: &Arc<Mutex<Vec<ServerConn>>>,
    stop: &Arc<AtomicBool>,
    handlers: &Arc<Mutex<Vec<thread::JoinHandle<()>>>>,
) {
    let deadline = Instant::now() + HOLD_LIMIT;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, peer)) => {
                let index = {
                    let mut conns = conns.lock().unwrap();
                    conns.push(ServerConn {
                        peer,
                        received: None,
                    });
                    conns.len() - 1
                };
                let (conns, stop) = (conns.clone(), stop.clone());
                let handler = thread::Builder::new()
                    .name("peer-server-conn".into())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        if let Ok(received) = serve(stream, peer, &stop) {
                            conns.lock().unwrap()[index].received = Some(received);
                        }
                    })
                    .expect("spawning a connection thread");
                handlers.lock().unwrap().push(handler);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(1))
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

fn serve(mut stream: TcpStream, peer: SocketAddr, stop: &AtomicBool) -> io::Result<(u64, u64)> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(format!("{peer}\n").as_bytes())?;
    stream.set_read_timeout(Some(POLL))?;
    let deadline = Instant::now() + HOLD_LIMIT;
    let mut hash = Fnv64::default();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                total += n as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    stream.write_all(format!("{total} {:016x}\n", hash.finish()).as_bytes())?;
    Ok((total, hash.finish()))
}

/// A client of a [`PeerServer`]: connected, with the address the server
/// saw it come from.
#[derive(Debug)]
pub struct PeerClient {
    pub stream: TcpStream,
    /// The client's address as the server saw it.
    pub seen_as: SocketAddr,
}

/// What one [`PeerClient::exchange`] moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    pub sent_bytes: u64,
    pub sent_hash: u64,
    /// What the server said it received.
    pub server_bytes: u64,
    pub server_hash: u64,
}

impl Exchange {
    /// The server got exactly what was sent.
    pub fn intact(&self) -> bool {
        self.sent_bytes == self.server_bytes && self.sent_hash == self.server_hash
    }
}

impl PeerClient {
    /// Connects to a [`PeerServer`] and reads the address it saw. Call it
    /// in the client's namespace.
    pub fn connect(server: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&server, timeout)?;
        Self::from_stream(stream)
    }

    /// Reads the server's greeting on an already connected stream.
    pub fn from_stream(stream: TcpStream) -> io::Result<Self> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let line = read_line(&stream)?;
        let seen_as = line
            .parse()
            .map_err(|e| io::Error::other(format!("server greeting {line:?}: {e}")))?;
        Ok(Self { stream, seen_as })
    }

    /// Sends `bytes` seeded pseudo-random bytes, shuts down the sending
    /// side and reads what the server received.
    pub fn exchange(mut self, bytes: u64, seed: u64) -> io::Result<Exchange> {
        let mut data = ByteStream::new(seed);
        let mut hash = Fnv64::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            data.fill(&mut buf[..n]);
            self.stream.write_all(&buf[..n])?;
            hash.update(&buf[..n]);
            left -= n as u64;
        }
        self.stream.shutdown(Shutdown::Write)?;
        let line = read_line(&self.stream)?;
        let parsed = line
            .split_once(' ')
            .and_then(|(b, h)| Some((b.parse().ok()?, u64::from_str_radix(h, 16).ok()?)));
        let (server_bytes, server_hash) =
            parsed.ok_or_else(|| io::Error::other(format!("server summary {line:?}")))?;
        Ok(Exchange {
            sent_bytes: bytes,
            sent_hash: hash.finish(),
            server_bytes,
            server_hash,
        })
    }
}

/// One `\n`-terminated line, byte by byte so nothing after it is consumed.
fn read_line(mut stream: &TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 256 {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed after {:?}",
                    String::from_utf8_lossy(&line)
                ),
            ));
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
    }
    Err(io::Error::other("line too long"))
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

/// A UDP server that answers each datagram with `"<source ip:port>\n"`
/// followed by the datagram, and records the sources.
pub struct UdpEcho {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl UdpEcho {
    /// Binds `addr` inside `ns`; with `no_check` its answers carry no
    /// checksum.
    pub fn start(ns: &Netns, addr: impl Into<SocketAddr>, no_check: bool) -> io::Result<Self> {
        let addr = addr.into();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = mpsc::channel();
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            ns.spawn(move || {
                let socket = match UdpSocket::bind(addr).and_then(|s| {
                    s.set_read_timeout(Some(POLL))?;
                    if no_check {
                        set_udp_no_check(&s)?;
                    }
                    Ok(s)
                }) {
                    Ok(socket) => socket,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                let _ = bound_tx.send(socket.local_addr());
                let deadline = Instant::now() + HOLD_LIMIT;
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        seen.lock().unwrap().push(from);
                        let mut answer = format!("{from}\n").into_bytes();
                        answer.extend_from_slice(&buf[..n]);
                        let _ = socket.send_to(&answer, from);
                    }
                }
            })
        };
        let addr = bound_rx
            .recv_timeout(IO_TIMEOUT)
            .map_err(|_| io::Error::other("echo thread did not start"))??;
        Ok(Self {
            addr,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sources of the datagrams received so far.
    pub fn seen(&self) -> Vec<SocketAddr> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `payload` on a connected socket and waits for a [`UdpEcho`]
/// answer: the address the server saw and the payload it echoed.
pub fn udp_request(
    socket: &UdpSocket,
    payload: &[u8],
    timeout: Duration,
) -> io::Result<(SocketAddr, Vec<u8>)> {
    socket.set_read_timeout(Some(timeout))?;
    socket.send(payload)?;
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf)?;
    parse_echo_answer(&buf[..n])
}

/// A [`UdpEcho`] answer: the address the server saw, a newline, and the
/// payload it echoed.
pub fn parse_echo_answer(answer: &[u8]) -> io::Result<(SocketAddr, Vec<u8>)> {
    let split = answer
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| io::Error::other("echo answer without a newline"))?;
    let seen = String::from_utf8_lossy(&answer[..split]);
    let seen = seen
        .parse()
        .map_err(|e| io::Error::other(format!("echo answer {seen:?}: {e}")))?;
    Ok((seen, answer[split + 1..].to_vec()))
}

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
        let mut sum = 0u32;
        for pair in self.l4.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
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
    let mut sum = 17u32 + len as u32;
    let pseudo = [src.octets(), dst.octets()].concat();
    for pair in pseudo.chunks(2).chain(udp[..len].chunks(2)) {
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
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl PacketWatch {
    /// Watches `protocol` (ICMP or UDP) arriving in `ns`.
    pub fn start(ns: &Netns, protocol: SockProtocol) -> io::Result<Self> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            ns.spawn(move || {
                let fd = match socket::socket(
                    AddressFamily::Inet,
                    SockType::Raw,
                    SockFlag::SOCK_CLOEXEC,
                    protocol,
                )
                .and_then(|fd| {
                    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeval(POLL))?;
                    Ok(fd)
                }) {
                    Ok(fd) => fd,
                    Err(e) => {
                        let _ = ready_tx.send(Err(io::Error::from(e)));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let deadline = Instant::now() + HOLD_LIMIT;
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok(n) = socket::recv(fd.as_fd().as_raw_fd(), &mut buf, MsgFlags::empty())
                    else {
                        continue;
                    };
                    if let Some(packet) = parse_ipv4(&buf[..n]) {
                        seen.lock().unwrap().push(packet);
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(IO_TIMEOUT)
            .map_err(|_| io::Error::other("watch thread did not start"))??;
        Ok(Self {
            seen,
            stop,
            thread: Some(thread),
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

impl Drop for PacketWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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

/// One row of `cni-ebpfd nat --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatFlow {
    pub proto: String,
    pub pod: SocketAddr,
    pub remote: SocketAddr,
    pub translated: SocketAddr,
    pub state: Option<String>,
    pub idle_ms: u64,
}

/// `cni-ebpfd nat --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatTable {
    pub flows: Vec<NatFlow>,
    pub count: u64,
    pub limit: u64,
    pub capacity: u64,
}

/// Reads `node`'s masquerade table with `cni-ebpfd nat --json`.
pub fn nat_table(node: &Node) -> NatTable {
    let stdout = node.agent("nat", &["--json"]);
    let raw: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("cni-ebpfd nat --json: {e}: {stdout}"));
    let addr = |row: &Value, key: &str| -> SocketAddr {
        row[key]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("nat row without a valid {key:?}: {row}"))
    };
    let flows = raw["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("cni-ebpfd nat --json without flows: {raw}"))
        .iter()
        .map(|row| NatFlow {
            proto: row["proto"].as_str().unwrap_or_default().to_string(),
            pod: addr(row, "pod"),
            remote: addr(row, "remote"),
            translated: addr(row, "translated"),
            state: row["state"].as_str().map(str::to_string),
            idle_ms: row["idleMs"].as_u64().unwrap_or(u64::MAX),
        })
        .collect();
    let number = |key: &str| {
        raw[key]
            .as_u64()
            .unwrap_or_else(|| panic!("cni-ebpfd nat --json without {key:?}: {raw}"))
    };
    NatTable {
        flows,
        count: number("count"),
        limit: number("limit"),
        capacity: number("capacity"),
    }
}

/// `cni-ebpfd gc --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOutcome {
    pub scanned: u64,
    pub expired: u64,
    pub live: u64,
}

/// Runs one `cni-ebpfd gc --json` with `timeouts` (flags such as
/// `--udp-timeout 0`) on `node`.
pub fn nat_gc(node: &Node, timeouts: &[&str]) -> GcOutcome {
    let mut args = timeouts.to_vec();
    args.push("--json");
    let stdout = node.agent("gc", &args);
    let raw: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("cni-ebpfd gc --json: {e}: {stdout}"));
    let number = |key: &str| {
        raw[key]
            .as_u64()
            .unwrap_or_else(|| panic!("cni-ebpfd gc --json without {key:?}: {raw}"))
    };
    GcOutcome {
        scanned: number("scanned"),
        expired: number("expired"),
        live: number("live"),
    }
}

/// The cluster CIDR both nodes of [`TwoNodes`] carve their pod CIDRs from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The IPv6 cluster CIDR of two-node tests.
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/48";

/// One node of a [`TwoNodes`] topology: its underlay address and pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSide {
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: &'static str,
    pub underlay_ip6: Ipv6Addr,
    pub pod_cidr6: &'static str,
}

impl NodeSide {
    pub fn pod_cidr_of(self, family: Family) -> &'static str {
        match family {
            Family::V4 => self.pod_cidr,
            Family::V6 => self.pod_cidr6,
        }
    }

    pub fn underlay_of(self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.underlay_ip.into(),
            Family::V6 => self.underlay_ip6.into(),
        }
    }
}

/// Node A's side.
pub const SIDE_A: NodeSide = NodeSide {
    underlay_ip: Ipv4Addr::new(10, 99, 0, 1),
    pod_cidr: "10.244.1.0/24",
    underlay_ip6: Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1),
    pod_cidr6: "fd00:10:244:1::/64",
};
/// Node B's side.
pub const SIDE_B: NodeSide = NodeSide {
    underlay_ip: Ipv4Addr::new(10, 99, 0, 2),
    pod_cidr: "10.244.2.0/24",
    underlay_ip6: Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2),
    pod_cidr6: "fd00:10:244:2::/64",
};

/// The name of the underlay veth in both nodes.
pub const UNDERLAY: &str = "underlay";

/// Two nodes joined by an underlay veth (`10.99.0.1/24` and `10.99.0.2/24`),
/// each with its own bpffs directory (one shared mount) and pod CIDR.
pub struct TwoNodes {
    pub a: Node,
    pub b: Node,
}

impl TwoNodes {
    pub fn new() -> Self {
        let bpffs = Arc::new(Bpffs::new());
        let a = Node::with_bpffs(bpffs.clone());
        let b = Node::with_bpffs(bpffs);
        let b_path = b.netns().path().to_string_lossy().into_owned();
        a.netns().ip(&[
            "link", "add", UNDERLAY, "type", "veth", "peer", "name", UNDERLAY, "netns", &b_path,
        ]);
        for (node, side) in [(&a, SIDE_A), (&b, SIDE_B)] {
            node.netns().ip(&[
                "addr",
                "add",
                &format!("{}/24", side.underlay_ip),
                "dev",
                UNDERLAY,
            ]);
            node.netns().ip(&[
                "addr",
                "add",
                &format!("{}/64", side.underlay_ip6),
                "dev",
                UNDERLAY,
                "nodad",
            ]);
            node.netns().ip(&["link", "set", UNDERLAY, "up"]);
        }
        Self { a, b }
    }

    /// Node A's config for pods of `families` (one, or both for dual
    /// stack), as [`TwoNodes::conf_a`] for each.
    pub fn conf_a_of(&self, families: &[Family]) -> Value {
        node_conf_of(&self.a, SIDE_A, SIDE_B, families)
    }

    /// Node B's config for pods of `families`.
    pub fn conf_b_of(&self, families: &[Family]) -> Value {
        node_conf_of(&self.b, SIDE_B, SIDE_A, families)
    }

    /// Node A's config: its pod CIDR, masquerade on except inside the
    /// cluster, the underlay as uplink and a route to B's pods via B.
    pub fn conf_a(&self) -> Value {
        node_conf(&self.a, SIDE_A, SIDE_B)
    }

    /// Node B's config, as [`TwoNodes::conf_a`] the other way round.
    pub fn conf_b(&self) -> Value {
        node_conf(&self.b, SIDE_B, SIDE_A)
    }
}

impl Default for TwoNodes {
    fn default() -> Self {
        Self::new()
    }
}

fn node_conf_of(node: &Node, own: NodeSide, other: NodeSide, families: &[Family]) -> Value {
    let mut builder = node.conf().subnet(own.pod_cidr_of(families[0]));
    if let Some(second) = families.get(1) {
        builder = builder.second_subnet(own.pod_cidr_of(*second));
    }
    let routes: Vec<Value> = families
        .iter()
        .map(|f| json!({ "dst": other.pod_cidr_of(*f), "gw": other.underlay_of(*f).to_string() }))
        .collect();
    with_keys(
        builder.build(),
        json!({
            "ipMasq": true,
            "nonMasqueradeCIDRs": [CLUSTER_CIDR, CLUSTER_CIDR_V6],
            "uplink": UNDERLAY,
            "nodeRoutes": routes,
        }),
    )
}

fn node_conf(node: &Node, own: NodeSide, other: NodeSide) -> Value {
    with_keys(
        node.conf().subnet(own.pod_cidr).build(),
        json!({
            "ipMasq": true,
            "nonMasqueradeCIDRs": [CLUSTER_CIDR],
            "uplink": UNDERLAY,
            "nodeRoutes": [{ "dst": other.pod_cidr, "gw": other.underlay_ip.to_string() }],
        }),
    )
}
