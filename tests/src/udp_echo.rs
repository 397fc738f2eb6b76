//! A UDP server that answers each datagram with the address it came from,
//! and the client side of that exchange.

use std::{
    io,
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    background::{HOLD_LIMIT, IO_TIMEOUT, POLL},
    netns::Netns,
    sockets::set_udp_no_check,
};

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
    pub fn start(ns: &Netns, addr: SocketAddrV4, no_check: bool) -> io::Result<Self> {
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
