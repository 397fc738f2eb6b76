//! Traffic between namespaces: ping, a hashed TCP transfer and UDP probes,
//! all with bounded counts and deadlines.

use std::{
    io::{self, Read},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    background::Background,
    hash::{Fnv64, send_seeded},
    netns::Netns,
    process::KillOnDrop,
    sockets::udp_bind,
    wait::wait_until,
};

/// `ping -c count` from `from` to `ip`: transmitted and received counts.
pub fn ping_counts(from: &Netns, source: Option<IpAddr>, ip: IpAddr, count: u32) -> (u32, u32) {
    ping_every(from, source, ip, count, "0.2")
}

/// `ping -c count -i interval` (in seconds; root may go down to 0.002)
/// from `from` to `ip`: transmitted and received counts.
pub fn ping_every(
    from: &Netns,
    source: Option<IpAddr>,
    ip: IpAddr,
    count: u32,
    interval: &str,
) -> (u32, u32) {
    let mut args = vec![
        "-n".to_string(),
        "-q".to_string(),
        "-c".to_string(),
        count.to_string(),
        "-W".to_string(),
        "1".to_string(),
        "-i".to_string(),
        interval.to_string(),
    ];
    if let Some(source) = source {
        args.extend(["-I".to_string(), source.to_string()]);
    }
    args.push(ip.to_string());
    let output = from.exec("ping", &args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_ping_summary(&stdout).unwrap_or((count, 0))
}

/// Whether every one of `count` pings from `from` to `ip` was answered.
pub fn ping(from: &Netns, ip: IpAddr, count: u32) -> bool {
    ping_counts(from, None, ip, count) == (count, count)
}

/// `N packets transmitted, M received` from ping's summary.
fn parse_ping_summary(stdout: &str) -> Option<(u32, u32)> {
    let line = stdout.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line
        .split(',')
        .map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
    Some((numbers.next()??, numbers.next()??))
}

/// Outcome of [`tcp_transfer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub sent_bytes: u64,
    pub sent_hash: u64,
    pub received_bytes: u64,
    pub received_hash: u64,
    pub elapsed: Duration,
}

impl Transfer {
    /// Everything sent arrived, unchanged.
    pub fn intact(&self) -> bool {
        self.sent_bytes == self.received_bytes && self.sent_hash == self.received_hash
    }
}

/// How long a transfer step may block.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `bytes` seeded pseudo-random bytes over TCP from a client in
/// `client_ns` to a server in `server_ns` listening on `ip:port` (`port` 0
/// picks one), hashing both ends of the stream.
pub fn tcp_transfer(
    server_ns: &Netns,
    client_ns: &Netns,
    ip: IpAddr,
    port: u16,
    bytes: u64,
) -> std::io::Result<Transfer> {
    let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<SocketAddr>>();
    // Set when the client gave up, so the server stops waiting for it.
    let client_failed = AtomicBool::new(false);
    let client_failed = &client_failed;
    thread::scope(|scope| {
        let server = scope.spawn(|| {
            server_ns.run(move || -> std::io::Result<(u64, u64)> {
                let listener = match TcpListener::bind((ip, port)) {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok((0, 0));
                    }
                };
                let _ = ready_tx.send(listener.local_addr());
                // accept() has no timeout: poll a non-blocking listener.
                listener.set_nonblocking(true)?;
                let deadline = Instant::now() + IO_TIMEOUT;
                let mut stream = loop {
                    match listener.accept() {
                        Ok((stream, _)) => break stream,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if Instant::now() > deadline || client_failed.load(Ordering::Relaxed) {
                                return Err(std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "no client connected",
                                ));
                            }
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => return Err(e),
                    }
                };
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                let mut hash = Fnv64::default();
                let mut total = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = stream.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                    total += n as u64;
                }
                Ok((total, hash.finish()))
            })
        });
        let addr = ready_rx
            .recv_timeout(IO_TIMEOUT)
            .map_err(|_| std::io::Error::other("server thread did not start"))??;
        let started = Instant::now();
        let client = client_ns.run(move || -> std::io::Result<(u64, u64)> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            let hash = send_seeded(&mut stream, bytes, bytes ^ u64::from(addr.port()))?;
            stream.shutdown(Shutdown::Write)?;
            Ok((bytes, hash))
        });
        if client.is_err() {
            client_failed.store(true, Ordering::Relaxed);
        }
        let server = server.join().expect("server thread panicked");
        let elapsed = started.elapsed();
        let (sent_bytes, sent_hash) = client?;
        let (received_bytes, received_hash) = server?;
        Ok(Transfer {
            sent_bytes,
            sent_hash,
            received_bytes,
            received_hash,
            elapsed,
        })
    })
}

/// A received datagram and its source.
pub type Datagram = (SocketAddr, Vec<u8>);

/// A UDP socket in a namespace that records every datagram it receives
/// until stopped.
pub struct UdpReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Datagram>>>,
    _thread: Background,
}

impl UdpReceiver {
    /// Binds `addr` inside `ns` (port 0 picks one) and starts recording.
    pub fn start(ns: &Netns, addr: SocketAddr) -> std::io::Result<Self> {
        let received = Arc::new(Mutex::new(Vec::new()));
        let (thread, addr) = {
            let received = Arc::clone(&received);
            Background::start(
                ns,
                "receiver",
                None,
                move || udp_bind(addr, Duration::from_millis(50)),
                move |socket, running| {
                    let mut buf = [0u8; 2048];
                    while running.go_on() {
                        if let Ok((n, from)) = socket.recv_from(&mut buf) {
                            received.lock().unwrap().push((from, buf[..n].to_vec()));
                        }
                    }
                },
            )?
        };
        Ok(Self {
            addr,
            received,
            _thread: thread,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams so far, with their source.
    pub fn received(&self) -> Vec<Datagram> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what arrived, or `timeout`; returns
    /// whether it held.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Datagram]) -> bool) -> bool {
        wait_until(timeout, || done(&self.received.lock().unwrap()))
    }
}

/// Sends `count` datagrams of `payload` from `source` (an address of `ns`,
/// port 0 picks one) to `dest`, inside `ns`.
pub fn udp_send(
    ns: &Netns,
    source: SocketAddr,
    dest: SocketAddr,
    payload: &[u8],
    count: u32,
) -> std::io::Result<()> {
    ns.run(|| {
        let socket = UdpSocket::bind(source)?;
        for _ in 0..count {
            socket.send_to(payload, dest)?;
        }
        Ok(())
    })
}

/// `socket.recv_from(buf)`, tried again when a signal to the test process
/// interrupts it: a receive with a timeout (`SO_RCVTIMEO`) is not restarted
/// after a signal handler runs, and fails with `Interrupted` instead.
pub fn recv_from(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    loop {
        match socket.recv_from(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// A one-shot iperf3 server (`-s -1`) in `ns` bound to `ip` on `port`,
/// killed on drop if it is still running. It listens a moment after this
/// returns; clients retry or wait for its socket.
pub fn iperf3_server(ns: &Netns, ip: impl Into<IpAddr>, port: &str) -> KillOnDrop {
    let ip: IpAddr = ip.into();
    let mut command = ns.command("iperf3");
    command
        .args(["-s", "-1", "-B", &ip.to_string(), "-p", port])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    KillOnDrop(command.spawn().expect("spawning the iperf3 server"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summary() {
        let out = "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\n--- 10.0.0.2 ping statistics ---\n3 packets transmitted, 2 received, 33.3333% packet loss, time 402ms\n";
        assert_eq!(parse_ping_summary(out), Some((3, 2)));
        let out = "2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 1001ms\n";
        assert_eq!(parse_ping_summary(out), Some((2, 0)));
        assert_eq!(
            parse_ping_summary("ping: connect: Network is unreachable\n"),
            None
        );
    }
}
