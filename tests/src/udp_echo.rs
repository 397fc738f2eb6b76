//! A UDP server that answers each datagram with the address it came from,
//! and the client side of that exchange.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    background::{Background, HOLD_LIMIT, POLL},
    netns::Netns,
    sockets::{set_udp_no_check, udp_bind},
};

/// A UDP server that answers each datagram with `"<source ip:port>\n"`
/// followed by the datagram, and records the sources.
pub struct UdpEcho {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SocketAddr>>>,
    _thread: Background,
}

impl UdpEcho {
    /// Binds `addr` inside `ns`; with `no_check` its answers carry no
    /// checksum.
    pub fn start(ns: &Netns, addr: impl Into<SocketAddr>, no_check: bool) -> io::Result<Self> {
        let addr: SocketAddr = addr.into();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (thread, addr) = {
            let seen = seen.clone();
            Background::start(
                ns,
                "echo",
                Some(HOLD_LIMIT),
                move || {
                    let (socket, addr) = udp_bind(addr, POLL)?;
                    if no_check {
                        set_udp_no_check(&socket)?;
                    }
                    Ok((socket, addr))
                },
                move |socket, running| {
                    let mut buf = [0u8; 2048];
                    while running.go_on() {
                        if let Ok((n, from)) = socket.recv_from(&mut buf) {
                            seen.lock().unwrap().push(from);
                            let mut answer = format!("{from}\n").into_bytes();
                            answer.extend_from_slice(&buf[..n]);
                            let _ = socket.send_to(&answer, from);
                        }
                    }
                },
            )?
        };
        Ok(Self {
            addr,
            seen,
            _thread: thread,
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
