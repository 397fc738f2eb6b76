//! Helpers of the hostPort tests: a cgroup v2 directory of the test's own
//! for the plugin's socket hooks (`cgroupRoot`), clients that run as
//! processes in the node namespace *and* that cgroup, a node with an uplink
//! to an `ext` namespace, `portMappings` configs, and readers of the
//! `HOST_PORTS` map.

use std::{
    ffi::OsStr,
    fs::{File, OpenOptions},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    ops::{Deref, DerefMut},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    Netns, Node, NsCommand, Pod,
    conf::with_keys,
    hash::{ByteStream, Fnv64},
    names,
    node::Ext,
    process::{self, DEFAULT_TIMEOUT},
    uplink,
};

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("no cgroup2 mount in /proc/self/mountinfo")
}

/// A child cgroup of the cgroup v2 root, made for one test: the plugin's
/// socket hooks attach to it (never to the machine's root cgroup), and
/// node-side clients run in it. Removed on drop, after any process the test
/// left in it was killed.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> Self {
        crate::require_root();
        let path = cgroup2_mount().join(names::unique("cni-ebpf-test"));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pids in the cgroup.
    pub fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    /// A command whose child joins `netns` and this cgroup before exec.
    pub fn command(&self, netns: &Netns, program: impl AsRef<OsStr>) -> CgroupCommand {
        let procs_path = self.path.join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", procs_path.display()));
        let fd = procs.as_raw_fd();
        let mut command = netns.command(program);
        // SAFETY: write(2) is async-signal-safe, and `fd` stays open in the
        // parent (owned by `_procs`) for as long as the command can spawn.
        // "0" moves the writing process: the child, before it execs.
        unsafe {
            command.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        CgroupCommand {
            command,
            _procs: procs,
        }
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Only this test's children can be in it; normally none is left.
        for pid in self.procs() {
            eprintln!(
                "[harness] killing pid {pid} left in {}",
                self.path.display()
            );
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // An exited process leaves the cgroup a moment later.
        for _ in 0..200 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
        eprintln!("[harness] could not remove cgroup {}", self.path.display());
    }
}

/// A [`Command`] that joins a network namespace and a [`TestCgroup`].
pub struct CgroupCommand {
    command: NsCommand,
    _procs: File,
}

impl Deref for CgroupCommand {
    type Target = Command;

    fn deref(&self) -> &Command {
        &self.command
    }
}

impl DerefMut for CgroupCommand {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.command
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// One `portMappings` entry as a runtime passes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort {
    pub proto: Proto,
    pub host_port: u16,
    pub container_port: u16,
    pub host_ip: Option<Ipv4Addr>,
}

impl HostPort {
    pub fn tcp(host_port: u16, container_port: u16) -> Self {
        Self {
            proto: Proto::Tcp,
            host_port,
            container_port,
            host_ip: None,
        }
    }

    pub fn udp(host_port: u16, container_port: u16) -> Self {
        Self {
            proto: Proto::Udp,
            ..Self::tcp(host_port, container_port)
        }
    }

    /// Published on `ip` only (`hostIP`).
    pub fn on(self, ip: Ipv4Addr) -> Self {
        Self {
            host_ip: Some(ip),
            ..self
        }
    }

    pub fn to_json(&self) -> Value {
        let mut entry = json!({
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.proto.name(),
        });
        if let Some(ip) = self.host_ip {
            entry["hostIP"] = json!(ip.to_string());
        }
        entry
    }
}

/// `conf` as a runtime passes it to a plugin that declared the
/// `portMappings` capability, with `cgroupRoot` set to `cgroup`.
pub fn with_port_mappings(conf: Value, cgroup: &TestCgroup, mappings: &[HostPort]) -> Value {
    let list: Vec<Value> = mappings.iter().map(HostPort::to_json).collect();
    with_keys(
        conf,
        json!({
            "capabilities": { "portMappings": true },
            "cgroupRoot": cgroup.path(),
            "runtimeConfig": { "portMappings": list },
        }),
    )
}

/// A node with an uplink to `ext` (its default route) and a cgroup of its
/// own for the socket hooks. Pods borrow `node`, so they go first.
pub struct HostPortNode {
    pub node: Node,
    pub ext: Ext,
    pub cgroup: TestCgroup,
}

impl HostPortNode {
    pub fn new() -> Self {
        let node = Node::new();
        let ext = uplink::uplink_with_default_route(&node);
        Self {
            node,
            ext,
            cgroup: TestCgroup::new(),
        }
    }

    /// The node's address on the uplink.
    pub fn node_ip(&self) -> Ipv4Addr {
        self.ext.node_ip
    }

    /// The node's default config publishing `mappings`.
    pub fn conf(&self, mappings: &[HostPort]) -> Value {
        with_port_mappings(self.node.conf().build(), &self.cgroup, mappings)
    }

    /// A pod publishing `mappings`; panics if ADD fails.
    pub fn add_pod(&self, mappings: &[HostPort]) -> Pod<'_> {
        self.node.add_pod_with(self.conf(mappings))
    }

    /// Adds `ip`/32 on the node's uplink (a second node address; this
    /// kernel has no dummy links) and a route to it from `ext`. Do it before
    /// the first ADD: ADD reads the node's addresses.
    pub fn add_node_address(&self, ip: Ipv4Addr) {
        self.node
            .netns()
            .ip(&["addr", "add", &format!("{ip}/32"), "dev", "uplink"]);
        self.ext.netns.ip(&[
            "route",
            "add",
            &format!("{ip}/32"),
            "via",
            &self.ext.node_ip.to_string(),
        ]);
    }

    /// [`node_tcp_exchange`] from this node.
    pub fn tcp_from_node(&self, dest: impl Into<SocketAddr>, bytes: usize, seed: u64) -> NodeTcp {
        node_tcp_exchange(self.node.netns(), Some(&self.cgroup), dest, bytes, seed)
    }

    /// [`node_udp_request`] from this node.
    pub fn udp_from_node(
        &self,
        dest: impl Into<SocketAddr>,
        payload: &str,
        connected: bool,
    ) -> NodeUdp {
        node_udp_request(self.node.netns(), &self.cgroup, dest, payload, connected)
    }
}

impl Default for HostPortNode {
    fn default() -> Self {
        Self::new()
    }
}

/// The node-side TCP client (Perl is essential on Debian, so always there):
/// connects, reads an [`PeerServer`](crate::peer_server::PeerServer) greeting, sends stdin, shuts down
/// its side and reads the server's summary.
const TCP_CLIENT: &str = r#"
use strict; use warnings; use IO::Socket::IP;
$SIG{ALRM} = sub { die "timed out\n" }; alarm 30;
my ($host, $port) = @ARGV;
binmode STDIN;
my $data = do { local $/; <STDIN> };
$data = '' unless defined $data;
my $s = IO::Socket::IP->new(PeerHost => $host, PeerPort => $port, Proto => 'tcp', Timeout => 10)
    or die "connect: $@\n";
binmode $s;
sub hp { my ($h, $p) = @_; return $h =~ /:/ ? "[$h]:$p" : "$h:$p" }
printf "local %s\npeer %s\n", hp($s->sockhost, $s->sockport), hp($s->peerhost, $s->peerport);
my $greeting = <$s>;
defined $greeting or die "no greeting\n";
print "seen $greeting";
my $off = 0;
while ($off < length $data) {
    my $n = syswrite($s, $data, length($data) - $off, $off);
    defined $n or die "send: $!\n";
    $off += $n;
}
shutdown($s, 1) or die "shutdown: $!\n";
my $summary = <$s>;
defined $summary or die "no summary\n";
print "summary $summary";
"#;

/// The node-side UDP client: sends one datagram (from a connected socket,
/// or with `sendto`) and prints the source and bytes of the answer.
const UDP_CLIENT: &str = r#"
use strict; use warnings; use Socket qw(:addrinfo SOCK_DGRAM);
$SIG{ALRM} = sub { die "timed out\n" }; alarm 30;
my ($host, $port, $payload, $mode) = @ARGV;
my ($err, $ai) = getaddrinfo($host, $port, { socktype => SOCK_DGRAM, flags => AI_NUMERICHOST });
die "getaddrinfo: $err\n" if $err;
socket(my $s, $ai->{family}, SOCK_DGRAM, 0) or die "socket: $!\n";
my $to = $ai->{addr};
if ($mode eq 'connected') {
    connect($s, $to) or die "connect: $!\n";
    defined send($s, $payload, 0) or die "send: $!\n";
} else {
    defined send($s, $payload, 0, $to) or die "send: $!\n";
}
sub hp {
    my ($e, $h, $p) = getnameinfo($_[0], NI_NUMERICHOST | NI_NUMERICSERV);
    die "getnameinfo: $e\n" if $e;
    return $h =~ /:/ ? "[$h]:$p" : "$h:$p";
}
printf "local %s\n", hp(getsockname($s));
my $rin = ''; vec($rin, fileno($s), 1) = 1;
select(my $rout = $rin, undef, undef, 5) or die "no answer\n";
my $from = recv($s, my $buf, 4096, 0);
defined $from or die "recv: $!\n";
printf "from %s\nanswer %s\n", hp($from), unpack('H*', $buf);
"#;

/// Runs a Perl `script` with `args` in `netns` (and `cgroup`); the `key
/// value` lines it printed, or its stderr when it failed.
fn run_client(
    netns: &Netns,
    cgroup: Option<&TestCgroup>,
    script: &str,
    args: &[String],
    stdin: &[u8],
) -> Result<Vec<(String, String)>, String> {
    let output = match cgroup {
        Some(cgroup) => {
            let mut command = cgroup.command(netns, "perl");
            command.arg("-e").arg(script).args(args);
            process::output_with_timeout(&mut command, Some(stdin), DEFAULT_TIMEOUT)
        }
        None => {
            let mut command = netns.command("perl");
            command.arg("-e").arg(script).args(args);
            process::output_with_timeout(&mut command, Some(stdin), DEFAULT_TIMEOUT)
        }
    }
    .unwrap_or_else(|e| panic!("spawning perl: {e}"));
    if !output.status.success() {
        return Err(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().to_string()))
        })
        .collect())
}

fn field<T: std::str::FromStr>(lines: &[(String, String)], key: &str) -> Result<T, String> {
    let value = lines
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .ok_or_else(|| format!("client printed no {key:?}: {lines:?}"))?;
    value
        .parse()
        .map_err(|_| format!("client's {key:?} {value:?} does not parse"))
}

/// What a node-side TCP exchange with an [`PeerServer`](crate::peer_server::PeerServer) saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTcpOutcome {
    /// The client socket's own address.
    pub local: SocketAddr,
    /// The client socket's peer (`getpeername`).
    pub peer: SocketAddr,
    /// The client as the server saw it.
    pub seen_as: SocketAddr,
    pub sent_bytes: u64,
    pub sent_hash: u64,
    pub server_bytes: u64,
    pub server_hash: u64,
}

impl NodeTcpOutcome {
    pub fn intact(&self) -> bool {
        self.sent_bytes == self.server_bytes && self.sent_hash == self.server_hash
    }
}

/// `Err` carries the client's stderr (e.g. `Connection refused`).
pub type NodeTcp = Result<NodeTcpOutcome, String>;

/// Connects from a process in `netns` (and `cgroup`) to `dest`, where an
/// [`PeerServer`](crate::peer_server::PeerServer) is expected, and sends `bytes` seeded bytes.
pub fn node_tcp_exchange(
    netns: &Netns,
    cgroup: Option<&TestCgroup>,
    dest: impl Into<SocketAddr>,
    bytes: usize,
    seed: u64,
) -> NodeTcp {
    let dest = dest.into();
    let mut data = vec![0u8; bytes];
    ByteStream::new(seed).fill(&mut data);
    let mut hash = Fnv64::default();
    hash.update(&data);
    let lines = run_client(
        netns,
        cgroup,
        TCP_CLIENT,
        &[dest.ip().to_string(), dest.port().to_string()],
        &data,
    )?;
    let summary: String = field(&lines, "summary")?;
    let (server_bytes, server_hash) = summary
        .split_once(' ')
        .and_then(|(b, h)| Some((b.parse().ok()?, u64::from_str_radix(h, 16).ok()?)))
        .ok_or_else(|| format!("server summary {summary:?}"))?;
    Ok(NodeTcpOutcome {
        local: field(&lines, "local")?,
        peer: field(&lines, "peer")?,
        seen_as: field(&lines, "seen")?,
        sent_bytes: bytes as u64,
        sent_hash: hash.finish(),
        server_bytes,
        server_hash,
    })
}

/// What a node-side UDP request to an [`UdpEcho`](crate::udp_echo::UdpEcho) got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUdpAnswer {
    pub local: SocketAddr,
    /// The answer's source as the client's socket reports it.
    pub from: SocketAddr,
    /// The client as the echo server saw it.
    pub seen_as: SocketAddr,
    pub echoed: Vec<u8>,
}

/// `Err` carries the client's stderr (e.g. `no answer`).
pub type NodeUdp = Result<NodeUdpAnswer, String>;

/// Sends `payload` from a process in `netns` and `cgroup` to `dest`, where
/// an [`UdpEcho`](crate::udp_echo::UdpEcho) is expected, and waits up to 5 s for the answer.
pub fn node_udp_request(
    netns: &Netns,
    cgroup: &TestCgroup,
    dest: impl Into<SocketAddr>,
    payload: &str,
    connected: bool,
) -> NodeUdp {
    let dest = dest.into();
    let mode = if connected { "connected" } else { "sendto" };
    let lines = run_client(
        netns,
        Some(cgroup),
        UDP_CLIENT,
        &[
            dest.ip().to_string(),
            dest.port().to_string(),
            payload.to_string(),
            mode.to_string(),
        ],
        &[],
    )?;
    let answer: String = field(&lines, "answer")?;
    let answer = hex_bytes(&answer).ok_or_else(|| format!("answer {answer:?} is not hex"))?;
    let (seen_as, echoed) =
        crate::udp_echo::parse_echo_answer(&answer).map_err(|e| e.to_string())?;
    Ok(NodeUdpAnswer {
        local: field(&lines, "local")?,
        from: field(&lines, "from")?,
        seen_as,
        echoed,
    })
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One entry of the `HOST_PORTS` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublishedPort {
    pub proto: u8,
    pub host_port: u16,
    /// `None`: every node address.
    pub host_ip: Option<Ipv4Addr>,
    pub pod_ip: Ipv4Addr,
    pub pod_port: u16,
    pub owner: u64,
}

/// The pinned map `name` of `node`.
pub fn map_path(node: &Node, name: &str) -> PathBuf {
    node.bpffs_root().join("maps").join(name)
}

/// `bpftool map dump` of the pinned map `name`: every entry's key and value
/// bytes.
pub fn dump_map(node: &Node, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let path = map_path(node, name);
    let stdout = node.netns().exec_ok(
        "bpftool",
        &["-j", "map", "dump", "pinned", &path.to_string_lossy()],
    );
    let entries: Vec<Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("bpftool map dump {name}: {e}: {stdout}"));
    let bytes = |value: &Value| -> Vec<u8> {
        value
            .as_array()
            .unwrap_or_else(|| panic!("bpftool map dump {name}: no byte array in {value}"))
            .iter()
            .map(|b| {
                let text = b.as_str().unwrap_or_default().trim_start_matches("0x");
                u8::from_str_radix(text, 16).unwrap_or_else(|e| panic!("bpftool byte {b}: {e}"))
            })
            .collect()
    };
    entries
        .iter()
        .map(|entry| (bytes(&entry["key"]), bytes(&entry["value"])))
        .collect()
}

/// Deletes the entry `key` of the pinned map `name` behind the plugin's
/// back.
pub fn delete_map_entry(node: &Node, name: &str, key: &[u8]) {
    let mut args = vec![
        "map".to_string(),
        "delete".to_string(),
        "pinned".to_string(),
        map_path(node, name).to_string_lossy().into_owned(),
        "key".to_string(),
        "hex".to_string(),
    ];
    args.extend(key.iter().map(|b| format!("{b:02x}")));
    node.netns().exec_ok("bpftool", &args);
}

fn v4_of(addr: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(addr[12], addr[13], addr[14], addr[15])
}

/// Every published host port of `node`, sorted.
pub fn published(node: &Node) -> Vec<PublishedPort> {
    let mut out: Vec<PublishedPort> = dump_map(node, "HOST_PORTS")
        .into_iter()
        .map(|(key, value)| {
            assert_eq!((key.len(), value.len()), (20, 32), "HOST_PORTS entry size");
            PublishedPort {
                proto: key[18],
                host_port: u16::from_be_bytes([key[16], key[17]]),
                host_ip: (key[..16] != [0; 16]).then(|| v4_of(&key[..16])),
                pod_ip: v4_of(&value[..16]),
                pod_port: u16::from_be_bytes([value[16], value[17]]),
                owner: u64::from_ne_bytes(value[24..32].try_into().unwrap()),
            }
        })
        .collect();
    out.sort();
    out
}

/// The `HOST_PORTS` key of `mapping` (IPv4-mapped IPv6 address, port in
/// network order).
pub fn host_port_key(mapping: &HostPort) -> Vec<u8> {
    let addr: [u8; 16] = match mapping.host_ip {
        Some(ip) => {
            let mut a = [0u8; 16];
            a[10] = 0xff;
            a[11] = 0xff;
            a[12..].copy_from_slice(&ip.octets());
            a
        }
        None => [0; 16],
    };
    let mut key = addr.to_vec();
    key.extend_from_slice(&mapping.host_port.to_be_bytes());
    key.extend_from_slice(&[mapping.proto.number(), 0]);
    key
}

/// `ip:port` of `ip`.
pub fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// `ip:port` as a [`SocketAddr`].
pub fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}
