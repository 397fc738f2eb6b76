//! Long-lived TCP connections that exchange data on demand: an echo server
//! (a thread per connection) and clients that send a block and expect it
//! back, as often as a test asks. For tests that keep connections open
//! across an event (a program upgrade) and check each one still works.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    thread,
    time::Duration,
};

use crate::{
    background::{Background, Running},
    hash::ByteStream,
    netns::Netns,
    sockets::tcp_listen,
};

const POLL: Duration = Duration::from_millis(50);
/// The longest a server runs.
const LIFETIME: Duration = Duration::from_secs(300);

/// Echoes every byte back on every connection until dropped.
pub struct EchoServer {
    addr: SocketAddr,
    _accept: Background,
}

impl EchoServer {
    /// Listens on `addr` inside `ns` (port 0 picks one).
    pub fn start(ns: &Netns, addr: SocketAddrV4) -> io::Result<Self> {
        let (accept, addr) = Background::start(
            ns,
            "echo server",
            Some(LIFETIME),
            move || {
                let listener = tcp_listen(addr, false)?;
                listener.set_nonblocking(true)?;
                let addr = listener.local_addr()?;
                Ok((listener, addr))
            },
            move |listener, running| {
                let mut handlers = Vec::new();
                while running.go_on() {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let running = running.clone();
                            handlers.push(
                                thread::Builder::new()
                                    .stack_size(128 * 1024)
                                    .spawn(move || echo(stream, &running))
                                    .expect("spawning an echo thread"),
                            );
                        }
                        Err(_) => thread::sleep(POLL),
                    }
                }
                for handler in handlers {
                    let _ = handler.join();
                }
            },
        )?;
        Ok(Self {
            addr,
            _accept: accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn echo(mut stream: TcpStream, running: &Running) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 16 * 1024];
    while !running.stopped() {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// A connection to an [`EchoServer`], made from some namespace.
pub struct EchoClient {
    stream: TcpStream,
    seed: u64,
}

impl EchoClient {
    /// Connects from inside `ns`.
    pub fn connect(ns: &Netns, server: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = ns.run(|| TcpStream::connect_timeout(&server, timeout))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self { stream, seed: 0 })
    }

    /// Sends `bytes` pseudo-random bytes and reads them back; an error if
    /// anything else comes back, or the connection was reset or closed.
    pub fn round_trip(&mut self, bytes: usize) -> io::Result<()> {
        self.seed += 1;
        let mut data = vec![0u8; bytes];
        ByteStream::new(self.seed).fill(&mut data);
        self.stream.write_all(&data)?;
        let mut back = vec![0u8; bytes];
        self.stream.read_exact(&mut back)?;
        if back != data {
            return Err(io::Error::other("the echo differs from what was sent"));
        }
        Ok(())
    }
}
