//! A TCP server that tells each client the address it saw it come from and
//! hashes what the client sends, and its client: what a test uses to see
//! where masquerade, host-port or tunnel traffic came from and that its
//! bytes arrived intact.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::{
    background::{Background, HOLD_LIMIT, IO_TIMEOUT, POLL, Running},
    hash::{Fnv64, send_seeded},
    netns::Netns,
    sockets::tcp_listen,
    wait::wait_until,
};

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
    _accept: Background,
}

impl PeerServer {
    /// Listens on `addr` inside `ns` (port 0 picks one).
    pub fn start(ns: &Netns, addr: impl Into<SocketAddr>) -> io::Result<Self> {
        let addr = addr.into();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (accept, addr) = {
            let conns = conns.clone();
            Background::start(
                ns,
                "server",
                Some(HOLD_LIMIT),
                move || {
                    let listener = tcp_listen(addr, false)?;
                    listener.set_nonblocking(true)?;
                    let addr = listener.local_addr()?;
                    Ok((listener, addr))
                },
                move |listener, running| accept_loop(&listener, &conns, &running),
            )?
        };
        Ok(Self {
            addr,
            conns,
            _accept: accept,
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

/// Accepts until stopped, a thread per connection; joins them before it
/// returns.
fn accept_loop(listener: &TcpListener, conns: &Arc<Mutex<Vec<ServerConn>>>, running: &Running) {
    let mut handlers = Vec::new();
    while running.go_on() {
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
                let (conns, running) = (conns.clone(), running.clone());
                let handler = thread::Builder::new()
                    .name("peer-server-conn".into())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        if let Ok(received) = serve(stream, peer, &running) {
                            conns.lock().unwrap()[index].received = Some(received);
                        }
                    })
                    .expect("spawning a connection thread");
                handlers.push(handler);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(1))
            }
            Err(_) => thread::sleep(POLL),
        }
    }
    for handler in handlers {
        let _ = handler.join();
    }
}

fn serve(mut stream: TcpStream, peer: SocketAddr, running: &Running) -> io::Result<(u64, u64)> {
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
                if running.stopped() || Instant::now() > deadline {
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
        let sent_hash = send_seeded(&mut self.stream, bytes, seed)?;
        self.stream.shutdown(Shutdown::Write)?;
        let line = read_line(&self.stream)?;
        let parsed = line
            .split_once(' ')
            .and_then(|(b, h)| Some((b.parse().ok()?, u64::from_str_radix(h, 16).ok()?)));
        let (server_bytes, server_hash) =
            parsed.ok_or_else(|| io::Error::other(format!("server summary {line:?}")))?;
        Ok(Exchange {
            sent_bytes: bytes,
            sent_hash,
            server_bytes,
            server_hash,
        })
    }
}

/// One `\n`-terminated line, byte by byte so nothing after it is consumed
/// (a [`PeerServer`]'s greeting or summary).
pub fn read_line(mut stream: &TcpStream) -> io::Result<String> {
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
