//! Kubernetes Services written into a node namespace the way kube-proxy's
//! proxier writes them, in its `iptables` and `nftables` modes, so tests and
//! benchmarks meet the same netfilter state a Kubernetes node has.
//!
//! Modelled on `pkg/proxy/iptables/proxier.go` and
//! `pkg/proxy/nftables/proxier.go` (no session affinity, no
//! `loadBalancerSourceRanges`, no health-check node ports). Like
//! kube-proxy, one proxier per IP family of the cluster (`--cluster-cidr`
//! lists one CIDR per family): IPv4 rules with `iptables-restore` or in an
//! `ip` table, IPv6 rules of the same shape with `ip6tables-restore` or in
//! an `ip6` table; a dual-stack Service is one [`Service`] per family (its
//! two ClusterIPs, each with the endpoints of its family), as each
//! proxier sees it.
//!
//! - iptables: `KUBE-SERVICES` (from `PREROUTING` and `OUTPUT`) →
//!   `KUBE-SVC-*` (random balancing with `statistic`) → `KUBE-SEP-*` (DNAT,
//!   hairpin `KUBE-MARK-MASQ`); `KUBE-EXT-*` for NodePorts, externalIPs and
//!   LoadBalancer IPs, `KUBE-SVL-*` for `externalTrafficPolicy: Local`;
//!   `KUBE-NODEPORTS` last in `KUBE-SERVICES`; `KUBE-POSTROUTING`
//!   masquerades what `KUBE-MARK-MASQ` marked (0x4000); the filter table's
//!   `KUBE-FORWARD`, `KUBE-SERVICES`, `KUBE-EXTERNAL-SERVICES`,
//!   `KUBE-FIREWALL`. IPv6: addresses as `/128`, DNAT to `[addr]:port`,
//!   no localnet rule in `KUBE-FIREWALL`, and NodePorts not on `::1`. Written with `iptables-restore --noflush`, as
//!   kube-proxy does, so other rules of the node (a CNI plugin's own
//!   masquerade chains) stay.
//! - nftables: one `ip kube-proxy` table (`ip6 kube-proxy` for IPv6, with
//!   `ip6 daddr`, `ipv6_addr` and NodePorts not on `::1`): verdict maps `service-ips` and
//!   `service-nodeports` dispatched from `services`, chains `service-*`,
//!   `local-*`, `external-*`, `endpoint-*`, `mark-for-masquerade`,
//!   `masquerading`, base chains `nat-prerouting`/`nat-output`/
//!   `nat-postrouting` and `filter-*` (with `ct state invalid drop` in
//!   `filter-forward`). Replaced as a whole in one `nft -f` transaction.
//!
//! Chain names have kube-proxy's shape (`KUBE-SVC-` and 16 base32
//! characters; `service-XXXXXXXX-ns/name/tcp/port`); kube-proxy hashes with
//! SHA-256, this module with FNV-1a, which is all a test needs: stable
//! names, distinct per service port and endpoint.

use std::{fmt, fmt::Write as _, net::IpAddr};

use crate::{
    Family,
    hash::Fnv64,
    netns::Netns,
    process::{self, DEFAULT_TIMEOUT},
};

/// kube-proxy's default masquerade bit 14.
pub const MASQUERADE_MARK: u32 = 0x4000;
/// The nftables table kube-proxy owns.
pub const NFT_TABLE: &str = "kube-proxy";

/// Which proxier writes the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Iptables,
    Nftables,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// As kube-proxy writes it in rules and chain names.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `externalTrafficPolicy` (it applies to NodePorts, externalIPs and
/// LoadBalancer IPs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// One ready endpoint of a service port: the address and the port the
/// service's `targetPort` resolved to, and whether it is on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub local: bool,
}

/// `net.JoinHostPort`: `10.244.1.2:8080`, `[fd00::2]:8080`.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::net::SocketAddr::new(self.ip, self.port))
    }
}

/// One port of a Service, as kube-proxy sees a `ServicePort` with its
/// endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `namespace/name`.
    pub name: String,
    /// The port's name; empty for an unnamed single port.
    pub port_name: String,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub endpoints: Vec<Endpoint>,
    pub node_port: Option<u16>,
    pub external_traffic_policy: TrafficPolicy,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
}

impl Service {
    /// A ClusterIP service `namespace/name` without endpoints.
    pub fn new(name: &str, cluster_ip: impl Into<IpAddr>, port: u16, protocol: Protocol) -> Self {
        assert!(
            name.contains('/'),
            "service name {name:?} is not namespace/name"
        );
        Self {
            name: name.to_string(),
            port_name: String::new(),
            cluster_ip: cluster_ip.into(),
            port,
            protocol,
            endpoints: Vec::new(),
            node_port: None,
            external_traffic_policy: TrafficPolicy::Cluster,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
        }
    }

    pub fn port_name(mut self, port_name: &str) -> Self {
        self.port_name = port_name.to_string();
        self
    }

    pub fn endpoint(mut self, ip: impl Into<IpAddr>, port: u16, local: bool) -> Self {
        self.endpoints.push(Endpoint {
            ip: ip.into(),
            port,
            local,
        });
        self
    }

    /// Replaces the endpoints (an endpoint moved, a pod restarted).
    pub fn with_endpoints(mut self, endpoints: Vec<Endpoint>) -> Self {
        self.endpoints = endpoints;
        self
    }

    pub fn node_port(mut self, port: u16) -> Self {
        self.node_port = Some(port);
        self
    }

    pub fn external_traffic_policy(mut self, policy: TrafficPolicy) -> Self {
        self.external_traffic_policy = policy;
        self
    }

    pub fn external_ip(mut self, ip: impl Into<IpAddr>) -> Self {
        self.external_ips.push(ip.into());
        self
    }

    pub fn load_balancer_ip(mut self, ip: impl Into<IpAddr>) -> Self {
        self.load_balancer_ips.push(ip.into());
        self
    }

    /// The family of the ClusterIP: the proxier that writes the rules.
    pub fn family(&self) -> Family {
        Family::of(self.cluster_ip)
    }

    /// `ServicePortName.String()`: `ns/name:port`, or `ns/name` unnamed.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            self.name.clone()
        } else {
            format!("{}:{}", self.name, self.port_name)
        }
    }

    /// Reached from outside the cluster: NodePort, externalIPs or
    /// LoadBalancer IPs.
    fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    fn external_policy_local(&self) -> bool {
        self.external_traffic_policy == TrafficPolicy::Local
    }

    /// What both proxiers work out about the service before writing its
    /// rules.
    fn facts(&self) -> Facts {
        let local_endpoints: Vec<Endpoint> =
            self.endpoints.iter().copied().filter(|e| e.local).collect();
        let has_endpoints = !self.endpoints.is_empty();
        Facts {
            name: self.port_name_string(),
            proto: self.protocol.as_str(),
            port: self.port,
            // Local policy: traffic from outside goes to local endpoints only.
            has_external_endpoints: if self.external_policy_local() {
                !local_endpoints.is_empty()
            } else {
                has_endpoints
            },
            local_endpoints,
            has_endpoints,
        }
    }

    /// `ns/name:port` for nftables chain names: `ns/name/tcp/port`.
    fn nft_name_base(&self) -> String {
        let (namespace, name) = self.name.split_once('/').unwrap();
        format!(
            "{namespace}/{name}/{}/{}",
            self.protocol.as_str(),
            self.port_name
        )
    }

    fn iptables_chain(&self, prefix: &str) -> String {
        format!(
            "{prefix}{}",
            hash16(&format!(
                "{}{}",
                self.port_name_string(),
                self.protocol.as_str()
            ))
        )
    }

    fn iptables_sep_chain(&self, endpoint: &Endpoint) -> String {
        format!(
            "KUBE-SEP-{}",
            hash16(&format!(
                "{}{}{endpoint}",
                self.port_name_string(),
                self.protocol.as_str()
            ))
        )
    }

    fn nft_chain(&self, prefix: &str) -> String {
        let base = self.nft_name_base();
        format!("{prefix}{}-{base}", hash8(&base))
    }

    fn nft_endpoint_chain(&self, endpoint: &Endpoint) -> String {
        // An IPv6 address's colons are not allowed in a chain name:
        // kube-proxy writes them as dots.
        let base = format!(
            "{}__{}/{}",
            self.nft_name_base(),
            endpoint.ip.to_string().replace(':', "."),
            endpoint.port
        );
        format!("endpoint-{}-{base}", hash8(&base))
    }
}

/// The node-wide settings of kube-proxy that shape the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `--cluster-cidr`: one CIDR per family, comma-separated; sources
    /// inside it are pods (the local-traffic detector), and ClusterIP
    /// traffic from outside it is masqueraded. Its families are the
    /// proxiers that run.
    pub cluster_cidr: String,
    /// `--nodeport-addresses` as addresses; empty means every local
    /// address (`addrtype --dst-type LOCAL` / `fib daddr type local`).
    pub node_ips: Vec<IpAddr>,
}

impl ClusterSettings {
    pub fn new(cluster_cidr: &str) -> Self {
        Self {
            cluster_cidr: cluster_cidr.to_string(),
            node_ips: Vec::new(),
        }
    }

    /// The cluster CIDR of `family`. Panics if the cluster has none.
    pub fn cluster_cidr_of(&self, family: Family) -> &str {
        self.cluster_cidr
            .split(',')
            .map(str::trim)
            .find(|cidr| Family::of_cidr(cidr) == family)
            .unwrap_or_else(|| {
                panic!(
                    "no {family:?} CIDR in --cluster-cidr {:?}",
                    self.cluster_cidr
                )
            })
    }

    /// The families of the cluster: a proxier runs for each.
    pub fn families(&self) -> Vec<Family> {
        Family::ALL
            .into_iter()
            .filter(|f| {
                self.cluster_cidr
                    .split(',')
                    .any(|c| Family::of_cidr(c.trim()) == *f)
            })
            .collect()
    }

    fn node_ips_of(&self, family: Family) -> Vec<IpAddr> {
        self.node_ips
            .iter()
            .copied()
            .filter(|ip| Family::of(*ip) == family)
            .collect()
    }
}

/// What the family changes in the tools and the rules' words.
impl Family {
    fn iptables_save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    fn iptables_restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// The length of a host address, as iptables writes it.
    fn host_prefix(self) -> &'static str {
        match self {
            Family::V4 => "/32",
            Family::V6 => "/128",
        }
    }

    /// The nftables family of the table and of address matches.
    fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn nft_addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    fn of_cidr(cidr: &str) -> Family {
        if cidr.contains(':') {
            Family::V6
        } else {
            Family::V4
        }
    }
}

/// Writes the rules of `services` into `ns`, replacing whatever this module
/// (or kube-proxy) wrote before, as one sync of each family's proxier
/// does: applying again with other endpoints is an endpoint move. Panics
/// if a tool fails or a service's family is not one of the cluster's.
pub fn apply(ns: &Netns, mode: Mode, settings: &ClusterSettings, services: &[Service]) {
    let families = settings.families();
    if let Some(stray) = services.iter().find(|s| !families.contains(&s.family())) {
        panic!(
            "service {} has a {:?} ClusterIP, the cluster's CIDRs are {:?}",
            stray.name,
            stray.family(),
            settings.cluster_cidr
        );
    }
    for family in families {
        let services: Vec<Service> = services
            .iter()
            .filter(|s| s.family() == family)
            .cloned()
            .collect();
        match mode {
            Mode::Iptables => {
                let saved = ns.exec_ok(family.iptables_save(), &[] as &[&str]);
                let input = iptables_restore_input(settings, family, &services, &saved);
                restore(ns, family.iptables_restore(), &["-w", "--noflush"], &input);
            }
            Mode::Nftables => {
                let script = nft_script(settings, family, &services);
                restore(ns, "nft", &["-f", "-"], &script);
            }
        }
    }
}

/// Removes everything [`apply`] wrote in `mode`, both families.
pub fn flush(ns: &Netns, mode: Mode) {
    for family in Family::ALL {
        match mode {
            Mode::Iptables => {
                let saved = ns.exec_ok(family.iptables_save(), &[] as &[&str]);
                let input = iptables_flush_input(&saved);
                restore(ns, family.iptables_restore(), &["-w", "--noflush"], &input);
            }
            Mode::Nftables => {
                let ip = family.nft();
                let script = format!("add table {ip} {NFT_TABLE}\ndelete table {ip} {NFT_TABLE}\n");
                restore(ns, "nft", &["-f", "-"], &script);
            }
        }
    }
}

fn restore(ns: &Netns, program: &str, args: &[&str], input: &str) {
    let mut command = ns.command(program);
    command.args(args);
    let output =
        process::output_with_timeout(&mut command, Some(input.as_bytes()), DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("spawning {program} in {}: {e}", ns.name()));
    if !output.status.success() {
        panic!(
            "{program} {} in {} failed: {}\ninput:\n{}",
            args.join(" "),
            ns.name(),
            String::from_utf8_lossy(&output.stderr).trim(),
            numbered(input)
        );
    }
}

fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, line)| format!("{:4} {line}\n", i + 1))
        .collect()
}

/// 16 base32 characters of a hash of `s` (kube-proxy: of SHA-256).
fn hash16(s: &str) -> String {
    let mut first = Fnv64::default();
    first.update(s.as_bytes());
    let mut second = Fnv64::default();
    second.update(b"kube-proxy");
    second.update(s.as_bytes());
    let bits = (u128::from(first.finish()) << 64) | u128::from(second.finish());
    base32(bits, 16)
}

/// 8 base32 characters of a hash of `s`.
fn hash8(s: &str) -> String {
    hash16(s)[..8].to_string()
}

fn base32(bits: u128, chars: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..chars)
        .map(|i| ALPHABET[((bits >> (123 - 5 * i)) & 31) as usize] as char)
        .collect()
}

// ---- iptables mode ----

/// Jumps from built-in chains, ensured once as kube-proxy's
/// `iptables -C`/`-I` pass does: (table, chain, rule without `-A chain`).
const IPTABLES_JUMPS: &[(&str, &str, &str)] = &[
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    ),
    ("filter", "INPUT", "-j KUBE-FIREWALL"),
    (
        "filter",
        "FORWARD",
        "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    ("filter", "OUTPUT", "-j KUBE-FIREWALL"),
    (
        "nat",
        "PREROUTING",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "OUTPUT",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "POSTROUTING",
        "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
    ),
];

/// Chains kube-proxy always declares (so a restore flushes them).
const FILTER_CHAINS: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-FIREWALL",
    "KUBE-NODEPORTS",
];
const NAT_CHAINS: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];

/// Prefixes of the per-service chains, deleted once no service uses them.
const SERVICE_CHAIN_PREFIXES: &[&str] = &[
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-SEP-",
    "KUBE-FW-",
];

/// The `iptables-restore --noflush` input of one sync: `saved` is the
/// current `iptables-save`, from which missing jumps and stale service
/// chains are worked out.
pub fn iptables_restore_input(
    settings: &ClusterSettings,
    family: Family,
    services: &[Service],
    saved: &str,
) -> String {
    let host = family.host_prefix();
    let mut filter = Section::default();
    let mut nat = Section::default();
    for chain in FILTER_CHAINS {
        filter.chain(chain);
    }
    for chain in NAT_CHAINS {
        nat.chain(chain);
    }
    let existing = SavedTables::parse(saved);
    for (table, chain, rule) in IPTABLES_JUMPS {
        if !existing.has_rule(table, chain, rule) {
            let section = if *table == "nat" {
                &mut nat
            } else {
                &mut filter
            };
            section.rule(&format!("-I {chain} 1 {rule}"));
        }
    }

    if family == Family::V4 {
        filter.rule(
            "-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        );
    }
    filter.rule("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP");
    filter.rule(&format!(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQUERADE_MARK:#x}/{MASQUERADE_MARK:#x} -j ACCEPT"
    ));
    filter.rule(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    );

    nat.rule(&format!(
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQUERADE_MARK:#x}/{MASQUERADE_MARK:#x} -j RETURN"
    ));
    nat.rule(&format!(
        "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQUERADE_MARK:#x}"
    ));
    nat.rule(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
    );
    nat.rule(&format!(
        "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQUERADE_MARK:#x}"
    ));

    for service in services {
        iptables_service(settings, family, service, &mut filter, &mut nat);
    }

    // Last in KUBE-SERVICES, as kube-proxy notes in the rule's comment.
    let nodeports_comment = "-m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\"";
    let node_ips = settings.node_ips_of(family);
    if node_ips.is_empty() {
        // IPv6 NodePorts never work on localhost: kube-proxy leaves `::1` out.
        let not_localhost = match family {
            Family::V4 => "",
            Family::V6 => "! -d ::1/128 ",
        };
        nat.rule(&format!(
            "-A KUBE-SERVICES {not_localhost}{nodeports_comment} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
        ));
    } else {
        for ip in &node_ips {
            nat.rule(&format!(
                "-A KUBE-SERVICES -d {ip}{host} {nodeports_comment} -j KUBE-NODEPORTS"
            ));
        }
    }

    // Service chains no service uses any more: declared (which flushes
    // them) and deleted, after every chain that jumped to them was
    // rewritten.
    for (table, section) in [("filter", &mut filter), ("nat", &mut nat)] {
        let stale: Vec<String> = existing
            .chains(table)
            .into_iter()
            .filter(|c| SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p)))
            .filter(|c| !section.chains.contains(c))
            .collect();
        for chain in stale {
            section.chain(&chain);
            section.late.push(format!("-X {chain}"));
        }
    }

    let mut out = String::new();
    filter.write("filter", &mut out);
    nat.write("nat", &mut out);
    out
}

/// The restore input that removes every jump and `KUBE-*` chain.
pub fn iptables_flush_input(saved: &str) -> String {
    let existing = SavedTables::parse(saved);
    let mut out = String::new();
    for table in ["filter", "nat"] {
        let mut section = Section::default();
        for (t, chain, rule) in IPTABLES_JUMPS {
            if *t == table && existing.has_rule(table, chain, rule) {
                section.rule(&format!("-D {chain} {rule}"));
            }
        }
        for chain in existing.chains(table) {
            if chain.starts_with("KUBE-") {
                section.chain(&chain);
                section.late.push(format!("-X {chain}"));
            }
        }
        section.write(table, &mut out);
    }
    out
}

/// A service's name in comments, protocol and port, its endpoints on this
/// node, and whether it has endpoints for cluster and for outside traffic.
struct Facts {
    name: String,
    proto: &'static str,
    port: u16,
    local_endpoints: Vec<Endpoint>,
    has_endpoints: bool,
    has_external_endpoints: bool,
}

fn iptables_service(
    settings: &ClusterSettings,
    family: Family,
    service: &Service,
    filter: &mut Section,
    nat: &mut Section,
) {
    let facts = service.facts();
    let (name, proto, port) = (&facts.name, facts.proto, facts.port);
    let host = family.host_prefix();
    let cluster_cidr = settings.cluster_cidr_of(family);
    let svc_chain = service.iptables_chain("KUBE-SVC-");
    let svl_chain = service.iptables_chain("KUBE-SVL-");
    let ext_chain = service.iptables_chain("KUBE-EXT-");
    let external_destinations = service
        .external_ips
        .iter()
        .map(|ip| (*ip, "external IP"))
        .chain(
            service
                .load_balancer_ips
                .iter()
                .map(|ip| (*ip, "loadbalancer IP")),
        );

    if !facts.has_endpoints {
        // Nothing in nat; the filter table rejects the service's addresses.
        filter.rule(&format!(
            "-A KUBE-SERVICES -m comment --comment \"{name} has no endpoints\" -m {proto} -p {proto} -d {}{host} --dport {port} -j REJECT",
            service.cluster_ip
        ));
        for (ip, _) in external_destinations {
            filter.rule(&format!(
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{name} has no endpoints\" -m {proto} -p {proto} -d {ip}{host} --dport {port} -j REJECT"
            ));
        }
        if let Some(node_port) = service.node_port {
            filter.rule(&format!(
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{name} has no endpoints\" -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {node_port} -j REJECT"
            ));
        }
        return;
    }

    // ClusterIP.
    nat.chain(&svc_chain);
    nat.rule(&format!(
        "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {}{host} --dport {port} -j {svc_chain}",
        service.cluster_ip
    ));
    nat.rule(&format!(
        "-A {svc_chain} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {}{host} --dport {port} ! -s {cluster_cidr} -j KUBE-MARK-MASQ",
        service.cluster_ip
    ));
    balance(nat, service, &svc_chain, &service.endpoints);

    // External destinations all go through KUBE-EXT-*.
    if service.externally_accessible() {
        nat.chain(&ext_chain);
        for (ip, what) in external_destinations.clone() {
            nat.rule(&format!(
                "-A KUBE-SERVICES -m comment --comment \"{name} {what}\" -m {proto} -p {proto} -d {ip}{host} --dport {port} -j {ext_chain}"
            ));
        }
        if let Some(node_port) = service.node_port {
            nat.rule(&format!(
                "-A KUBE-NODEPORTS -m comment --comment {name} -m {proto} -p {proto} --dport {node_port} -j {ext_chain}"
            ));
        }
        if service.external_policy_local() {
            nat.rule(&format!(
                "-A {ext_chain} -s {cluster_cidr} -m comment --comment \"pod traffic for {name} external destinations\" -j {svc_chain}"
            ));
            nat.rule(&format!(
                "-A {ext_chain} -m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
            ));
            nat.rule(&format!(
                "-A {ext_chain} -m comment --comment \"route LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j {svc_chain}"
            ));
            if facts.has_external_endpoints {
                nat.chain(&svl_chain);
                nat.rule(&format!("-A {ext_chain} -j {svl_chain}"));
                balance(nat, service, &svl_chain, &facts.local_endpoints);
            }
        } else {
            nat.rule(&format!(
                "-A {ext_chain} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
            ));
            nat.rule(&format!("-A {ext_chain} -j {svc_chain}"));
        }
    }
    if !facts.has_external_endpoints {
        // Local policy without local endpoints: what the EXT chain did not
        // short-circuit is dropped.
        for (ip, _) in external_destinations {
            filter.rule(&format!(
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{name} has no local endpoints\" -m {proto} -p {proto} -d {ip}{host} --dport {port} -j DROP"
            ));
        }
        if let Some(node_port) = service.node_port {
            filter.rule(&format!(
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{name} has no local endpoints\" -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {node_port} -j DROP"
            ));
        }
    }

    for endpoint in &service.endpoints {
        let sep = service.iptables_sep_chain(endpoint);
        nat.chain(&sep);
        nat.rule(&format!(
            "-A {sep} -m comment --comment {name} -s {}{host} -j KUBE-MARK-MASQ",
            endpoint.ip
        ));
        nat.rule(&format!(
            "-A {sep} -m comment --comment {name} -m {proto} -p {proto} -j DNAT --to-destination {endpoint}"
        ));
    }
}

/// `chain` spreads new connections over `endpoints` with `statistic`
/// probabilities 1/n, 1/(n-1), …, the last unconditional.
fn balance(nat: &mut Section, service: &Service, chain: &str, endpoints: &[Endpoint]) {
    let name = service.port_name_string();
    let n = endpoints.len();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let sep = service.iptables_sep_chain(endpoint);
        let statistic = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        nat.rule(&format!(
            "-A {chain} -m comment --comment \"{name} -> {endpoint}\"{statistic} -j {sep}"
        ));
    }
}

/// One table of a restore input: declared chains, rules, then deletions.
#[derive(Default)]
struct Section {
    chains: Vec<String>,
    rules: Vec<String>,
    late: Vec<String>,
}

impl Section {
    fn chain(&mut self, name: &str) {
        if !self.chains.iter().any(|c| c == name) {
            self.chains.push(name.to_string());
        }
    }

    fn rule(&mut self, rule: &str) {
        self.rules.push(rule.to_string());
    }

    fn write(&self, table: &str, out: &mut String) {
        if self.chains.is_empty() && self.rules.is_empty() && self.late.is_empty() {
            return;
        }
        let _ = writeln!(out, "*{table}");
        for chain in &self.chains {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for line in self.rules.iter().chain(&self.late) {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "COMMIT");
    }
}

/// Chains and rules of an `iptables-save` output, per table.
struct SavedTables {
    /// (table, line) for every `:CHAIN` and `-A` line.
    lines: Vec<(String, String)>,
}

impl SavedTables {
    fn parse(saved: &str) -> Self {
        let mut table = String::new();
        let mut lines = Vec::new();
        for line in saved.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                table = name.to_string();
            } else if line.starts_with(':') || line.starts_with("-A ") {
                lines.push((table.clone(), line.to_string()));
            }
        }
        Self { lines }
    }

    fn chains(&self, table: &str) -> Vec<String> {
        self.lines
            .iter()
            .filter(|(t, _)| t == table)
            .filter_map(|(_, line)| line.strip_prefix(':')?.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    /// Whether `-A chain rule` is there; iptables-save prints rules as
    /// they were given when, as here, they are in its canonical order.
    fn has_rule(&self, table: &str, chain: &str, rule: &str) -> bool {
        let wanted = format!("-A {chain} {rule}");
        self.lines
            .iter()
            .any(|(t, line)| t == table && *line == wanted)
    }
}

// ---- nftables mode ----

/// The `nft -f` script of one sync of `family`'s proxier: its `ip` (or
/// `ip6`) `kube-proxy` table deleted and written anew in one transaction.
pub fn nft_script(settings: &ClusterSettings, family: Family, services: &[Service]) -> String {
    let ip = family.nft();
    let addr_type = family.nft_addr_type();
    let mut table = NftTable {
        family: ip,
        ..NftTable::default()
    };
    let mark = format!("{MASQUERADE_MARK:#010x}");
    let no_localhost = match family {
        Family::V4 => "ip daddr != 127.0.0.0/8",
        Family::V6 => "ip6 daddr != ::1",
    };

    // kube-proxy names the priorities `dstnat - 10` and so on; nft 1.0.6
    // (Debian 12) accepts `dstnat` only on the prerouting hook, so they are
    // written as numbers (dstnat = -100, srcnat = 100).
    for (name, kind, hook, priority) in [
        ("filter-prerouting", "filter", "prerouting", "-110"),
        ("filter-input", "filter", "input", "-110"),
        ("filter-forward", "filter", "forward", "-110"),
        ("filter-output", "filter", "output", "-110"),
        ("filter-output-post-dnat", "filter", "output", "-90"),
        ("nat-prerouting", "nat", "prerouting", "-100"),
        ("nat-output", "nat", "output", "-100"),
        ("nat-postrouting", "nat", "postrouting", "100"),
    ] {
        table.chain(name).header = Some(format!(
            "type {kind} hook {hook} priority {priority}; policy accept;"
        ));
    }
    // Jumps from the base chains.
    table.rule("filter-prerouting", "ct state new jump firewall-check");
    table.rule("filter-input", "ct state new jump nodeport-endpoints-check");
    table.rule("filter-input", "ct state new jump service-endpoints-check");
    table.rule("filter-forward", "ct state invalid drop");
    table.rule(
        "filter-forward",
        "ct state new jump service-endpoints-check",
    );
    table.rule("filter-forward", "ct state new jump cluster-ips-check");
    table.rule("filter-output", "ct state new jump service-endpoints-check");
    table.rule("filter-output", "ct state new jump firewall-check");
    table.rule(
        "filter-output-post-dnat",
        "ct state new jump cluster-ips-check",
    );
    table.rule("nat-prerouting", "jump services");
    table.rule("nat-output", "jump services");
    table.rule("nat-postrouting", "jump masquerading");

    table.rule("mark-for-masquerade", &format!("mark set mark or {mark}"));
    table.rule("masquerading", &format!("mark and {mark} == 0 return"));
    table.rule("masquerading", &format!("mark set mark xor {mark}"));
    table.rule("masquerading", "masquerade fully-random");
    table.rule("reject-chain", "reject");
    table.rule(
        "cluster-ips-check",
        &format!("{ip} daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""),
    );
    table.rule(
        "firewall-check",
        &format!("{ip} daddr . meta l4proto . th dport vmap @firewall-ips"),
    );
    table.rule(
        "service-endpoints-check",
        &format!("{ip} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
    );
    table.rule(
        "services",
        &format!("{ip} daddr . meta l4proto . th dport vmap @service-ips"),
    );
    if settings.node_ips_of(family).is_empty() {
        table.rule(
            "nodeport-endpoints-check",
            &format!("fib daddr type local {no_localhost} meta l4proto . th dport vmap @no-endpoint-nodeports"),
        );
        table.rule(
            "services",
            &format!("fib daddr type local {no_localhost} meta l4proto . th dport vmap @service-nodeports"),
        );
    } else {
        table.rule(
            "nodeport-endpoints-check",
            &format!(
                "{ip} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"
            ),
        );
        table.rule(
            "services",
            &format!("{ip} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"),
        );
        let ips: Vec<String> = settings
            .node_ips_of(family)
            .iter()
            .map(IpAddr::to_string)
            .collect();
        table.set(
            "nodeport-ips",
            addr_type,
            "IPs that accept NodePort traffic",
            ips,
        );
    }

    let mut cluster_ips = Vec::new();
    let mut service_ips = Vec::new();
    let mut service_nodeports = Vec::new();
    let mut no_endpoint_services = Vec::new();
    let mut no_endpoint_nodeports = Vec::new();
    for service in services {
        cluster_ips.push(service.cluster_ip.to_string());
        nft_service(
            settings,
            family,
            service,
            &mut table,
            &mut service_ips,
            &mut service_nodeports,
            &mut no_endpoint_services,
            &mut no_endpoint_nodeports,
        );
    }
    cluster_ips.sort();
    cluster_ips.dedup();
    let addr_proto_port = &format!("{addr_type} . inet_proto . inet_service : verdict");
    let proto_port = "inet_proto . inet_service : verdict";
    table.set("cluster-ips", addr_type, "Active ClusterIPs", cluster_ips);
    table.map(
        "no-endpoint-services",
        addr_proto_port,
        "vmap to drop or reject packets to services with no endpoints",
        no_endpoint_services,
    );
    table.map(
        "no-endpoint-nodeports",
        proto_port,
        "vmap to drop or reject packets to service nodeports with no endpoints",
        no_endpoint_nodeports,
    );
    table.map(
        "firewall-ips",
        addr_proto_port,
        "destinations that are subject to LoadBalancerSourceRanges",
        Vec::new(),
    );
    table.map(
        "service-ips",
        addr_proto_port,
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        service_ips,
    );
    table.map(
        "service-nodeports",
        proto_port,
        "NodePort traffic",
        service_nodeports,
    );

    let mut out = format!("add table {ip} {NFT_TABLE}\ndelete table {ip} {NFT_TABLE}\n");
    table.write(&mut out);
    out
}

#[allow(clippy::too_many_arguments)]
fn nft_service(
    settings: &ClusterSettings,
    family: Family,
    service: &Service,
    table: &mut NftTable,
    service_ips: &mut Vec<String>,
    service_nodeports: &mut Vec<String>,
    no_endpoint_services: &mut Vec<String>,
    no_endpoint_nodeports: &mut Vec<String>,
) {
    let facts = service.facts();
    let (name, proto, port) = (&facts.name, facts.proto, facts.port);
    let cluster_chain = service.nft_chain("service-");
    let local_chain = service.nft_chain("local-");
    let external_chain = service.nft_chain("external-");
    let ip = family.nft();
    let cluster_cidr = settings.cluster_cidr_of(family);
    let external_ips: Vec<IpAddr> = service
        .external_ips
        .iter()
        .chain(&service.load_balancer_ips)
        .copied()
        .collect();

    if !facts.has_endpoints {
        let verdict = "goto reject-chain";
        for ip in std::iter::once(service.cluster_ip).chain(external_ips.iter().copied()) {
            no_endpoint_services.push(format!(
                "{ip} . {proto} . {port} comment \"{name}\" : {verdict}"
            ));
        }
        if let Some(node_port) = service.node_port {
            no_endpoint_nodeports.push(format!(
                "{proto} . {node_port} comment \"{name}\" : {verdict}"
            ));
        }
        return;
    }

    service_ips.push(format!(
        "{} . {proto} . {port} : goto {cluster_chain}",
        service.cluster_ip
    ));
    table.rule(
        &cluster_chain,
        &format!(
            "{ip} daddr {} {proto} dport {port} {ip} saddr != {cluster_cidr} jump mark-for-masquerade",
            service.cluster_ip
        ),
    );
    nft_balance(table, service, &cluster_chain, &service.endpoints);

    if service.externally_accessible() {
        for ip in &external_ips {
            service_ips.push(format!("{ip} . {proto} . {port} : goto {external_chain}"));
        }
        if let Some(node_port) = service.node_port {
            service_nodeports.push(format!("{proto} . {node_port} : goto {external_chain}"));
        }
        if service.external_policy_local() {
            table.rule(
                &external_chain,
                &format!(
                    "{ip} saddr {cluster_cidr} goto {cluster_chain} comment \"short-circuit pod traffic\""
                ),
            );
            table.rule(
                &external_chain,
                "fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"",
            );
            table.rule(
                &external_chain,
                &format!("fib saddr type local goto {cluster_chain} comment \"short-circuit local traffic\""),
            );
            if facts.has_external_endpoints {
                table.rule(&external_chain, &format!("goto {local_chain}"));
                nft_balance(table, service, &local_chain, &facts.local_endpoints);
            }
        } else {
            table.rule(&external_chain, "jump mark-for-masquerade");
            table.rule(&external_chain, &format!("goto {cluster_chain}"));
        }
    }
    if !facts.has_external_endpoints {
        for ip in &external_ips {
            no_endpoint_services.push(format!("{ip} . {proto} . {port} comment \"{name}\" : drop"));
        }
        if let Some(node_port) = service.node_port {
            no_endpoint_nodeports.push(format!("{proto} . {node_port} comment \"{name}\" : drop"));
        }
    }

    for endpoint in &service.endpoints {
        let chain = service.nft_endpoint_chain(endpoint);
        table.rule(
            &chain,
            &format!("{ip} saddr {} jump mark-for-masquerade", endpoint.ip),
        );
        table.rule(&chain, &format!("meta l4proto {proto} dnat to {endpoint}"));
    }
}

/// `numgen random mod n` over the endpoints' chains.
fn nft_balance(table: &mut NftTable, service: &Service, chain: &str, endpoints: &[Endpoint]) {
    let elements: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{i} : goto {}", service.nft_endpoint_chain(e)))
        .collect();
    table.rule(
        chain,
        &format!(
            "numgen random mod {} vmap {{ {} }}",
            endpoints.len(),
            elements.join(", ")
        ),
    );
}

#[derive(Default)]
struct NftChain {
    name: String,
    header: Option<String>,
    rules: Vec<String>,
}

#[derive(Default)]
struct NftTable {
    /// `ip` or `ip6`.
    family: &'static str,
    /// Sets and maps, already written out.
    declarations: Vec<String>,
    chains: Vec<NftChain>,
}

impl NftTable {
    fn chain(&mut self, name: &str) -> &mut NftChain {
        let index = match self.chains.iter().position(|c| c.name == name) {
            Some(index) => index,
            None => {
                self.chains.push(NftChain {
                    name: name.to_string(),
                    ..NftChain::default()
                });
                self.chains.len() - 1
            }
        };
        &mut self.chains[index]
    }

    fn rule(&mut self, chain: &str, rule: &str) {
        self.chain(chain).rules.push(rule.to_string());
    }

    fn set(&mut self, name: &str, kind: &str, comment: &str, elements: Vec<String>) {
        self.declare("set", name, kind, comment, elements);
    }

    fn map(&mut self, name: &str, kind: &str, comment: &str, elements: Vec<String>) {
        self.declare("map", name, kind, comment, elements);
    }

    fn declare(
        &mut self,
        what: &str,
        name: &str,
        kind: &str,
        comment: &str,
        elements: Vec<String>,
    ) {
        let mut text = format!("\t{what} {name} {{\n\t\ttype {kind}\n\t\tcomment \"{comment}\"\n");
        if !elements.is_empty() {
            let _ = writeln!(text, "\t\telements = {{ {} }}", elements.join(", "));
        }
        text.push_str("\t}\n");
        self.declarations.push(text);
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "table {} {NFT_TABLE} {{", self.family);
        let _ = writeln!(out, "\tcomment \"rules for kube-proxy\"");
        // Chains first: nft resolves a verdict map's `goto` as it reads.
        for chain in &self.chains {
            let _ = writeln!(out, "\tchain {} {{", chain.name);
            if let Some(header) = &chain.header {
                let _ = writeln!(out, "\t\t{header}");
            }
            let _ = writeln!(out, "\t}}");
        }
        for declaration in &self.declarations {
            out.push_str(declaration);
        }
        let _ = writeln!(out, "}}");
        for chain in &self.chains {
            for rule in &chain.rules {
                let _ = writeln!(
                    out,
                    "add rule {} {NFT_TABLE} {} {rule}",
                    self.family, chain.name
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const CLUSTER_CIDR: &str = "10.244.0.0/16";

    fn web() -> Service {
        Service::new(
            "default/web",
            Ipv4Addr::new(10, 96, 0, 20),
            80,
            Protocol::Tcp,
        )
        .port_name("http")
        .endpoint(Ipv4Addr::new(10, 244, 1, 2), 8080, true)
        .endpoint(Ipv4Addr::new(10, 244, 2, 3), 8080, false)
        .node_port(30080)
        .external_ip(Ipv4Addr::new(10, 200, 0, 10))
        .load_balancer_ip(Ipv4Addr::new(10, 200, 1, 10))
    }

    fn dns() -> Service {
        Service::new(
            "kube-system/kube-dns",
            Ipv4Addr::new(10, 96, 0, 10),
            53,
            Protocol::Udp,
        )
        .port_name("dns")
        .endpoint(Ipv4Addr::new(10, 244, 1, 5), 53, true)
    }

    fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn chain_names_have_kube_proxys_shape() {
        let web = web();
        let svc = web.iptables_chain("KUBE-SVC-");
        let suffix = svc.strip_prefix("KUBE-SVC-").unwrap();
        assert_eq!(suffix.len(), 16, "{svc}");
        assert!(
            suffix
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        );
        assert_eq!(web.iptables_chain("KUBE-EXT-")[9..], svc[9..]);
        let seps: Vec<String> = web
            .endpoints
            .iter()
            .map(|e| web.iptables_sep_chain(e))
            .collect();
        assert_ne!(seps[0], seps[1]);
        assert_ne!(svc, dns().iptables_chain("KUBE-SVC-"));
        let chain = web.nft_chain("service-");
        assert!(chain.ends_with("-default/web/tcp/http"), "{chain}");
        assert_eq!(
            chain.len(),
            "service-".len() + 8 + "-default/web/tcp/http".len()
        );
        let endpoint = web.nft_endpoint_chain(&web.endpoints[0]);
        assert!(
            endpoint.ends_with("-default/web/tcp/http__10.244.1.2/8080"),
            "{endpoint}"
        );
    }

    #[test]
    fn iptables_cluster_ip_balances_and_masquerades_off_cluster_sources() {
        let settings = ClusterSettings::new(CLUSTER_CIDR);
        let three = dns()
            .endpoint(Ipv4Addr::new(10, 244, 1, 6), 53, true)
            .endpoint(Ipv4Addr::new(10, 244, 2, 7), 53, false);
        let out = iptables_restore_input(&settings, Family::V4, std::slice::from_ref(&three), "");
        let svc = three.iptables_chain("KUBE-SVC-");
        assert!(out.contains(&format!(
            "-A KUBE-SERVICES -m comment --comment \"kube-system/kube-dns:dns cluster IP\" -m udp -p udp -d 10.96.0.10/32 --dport 53 -j {svc}"
        )), "{out}");
        assert!(
            out.contains("--dport 53 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"),
            "{out}"
        );
        let balance = lines_of(
            &out,
            &format!("-A {svc} -m comment --comment \"kube-system/kube-dns:dns ->"),
        );
        assert_eq!(balance.len(), 3, "{out}");
        assert!(balance[0].contains("-m statistic --mode random --probability 0.3333333333 "));
        assert!(balance[1].contains("-m statistic --mode random --probability 0.5000000000 "));
        assert!(!balance[2].contains("statistic"));
        let sep = three.iptables_sep_chain(&three.endpoints[0]);
        assert!(out.contains(&format!("-A {sep} -m comment --comment kube-system/kube-dns:dns -s 10.244.1.5/32 -j KUBE-MARK-MASQ")));
        assert!(out.contains(&format!("-A {sep} -m comment --comment kube-system/kube-dns:dns -m udp -p udp -j DNAT --to-destination 10.244.1.5:53")));
    }

    #[test]
    fn iptables_masquerade_forward_and_jumps() {
        let out = iptables_restore_input(
            &ClusterSettings::new(CLUSTER_CIDR),
            Family::V4,
            &[dns()],
            "",
        );
        for rule in [
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-I OUTPUT 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-I POSTROUTING 1 -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        ] {
            assert!(out.lines().any(|l| l == rule), "missing {rule:?} in\n{out}");
        }
        // A second sync finds the jumps and does not add them twice.
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n";
        let again = iptables_restore_input(
            &ClusterSettings::new(CLUSTER_CIDR),
            Family::V4,
            &[dns()],
            saved,
        );
        assert!(!again.contains("-I PREROUTING"), "{again}");
        assert!(again.contains("-I OUTPUT 1"), "{again}");
    }

    #[test]
    fn iptables_external_destinations_and_node_ports() {
        let settings = ClusterSettings::new(CLUSTER_CIDR);
        let web = web();
        let out = iptables_restore_input(&settings, Family::V4, std::slice::from_ref(&web), "");
        let ext = web.iptables_chain("KUBE-EXT-");
        let svc = web.iptables_chain("KUBE-SVC-");
        for rule in [
            format!(
                "-A KUBE-SERVICES -m comment --comment \"default/web:http external IP\" -m tcp -p tcp -d 10.200.0.10/32 --dport 80 -j {ext}"
            ),
            format!(
                "-A KUBE-SERVICES -m comment --comment \"default/web:http loadbalancer IP\" -m tcp -p tcp -d 10.200.1.10/32 --dport 80 -j {ext}"
            ),
            format!(
                "-A KUBE-NODEPORTS -m comment --comment default/web:http -m tcp -p tcp --dport 30080 -j {ext}"
            ),
            format!(
                "-A {ext} -m comment --comment \"masquerade traffic for default/web:http external destinations\" -j KUBE-MARK-MASQ"
            ),
            format!("-A {ext} -j {svc}"),
        ] {
            assert!(out.lines().any(|l| l == rule), "missing {rule:?} in\n{out}");
        }
        let services = lines_of(&out, "-A KUBE-SERVICES");
        assert_eq!(
            *services.last().unwrap(),
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
        );
        let mut only_node = settings.clone();
        only_node.node_ips = vec![Ipv4Addr::new(10, 250, 0, 1).into()];
        let out = iptables_restore_input(&only_node, Family::V4, &[web], "");
        assert!(
            out.contains("-A KUBE-SERVICES -d 10.250.0.1/32 -m comment"),
            "{out}"
        );
        assert!(!out.contains("--dst-type LOCAL -j KUBE-NODEPORTS"), "{out}");
    }

    #[test]
    fn iptables_local_policy_uses_local_endpoints_and_short_circuits_pods() {
        let web = web().external_traffic_policy(TrafficPolicy::Local);
        let out = iptables_restore_input(
            &ClusterSettings::new(CLUSTER_CIDR),
            Family::V4,
            std::slice::from_ref(&web),
            "",
        );
        let (ext, svc, svl) = (
            web.iptables_chain("KUBE-EXT-"),
            web.iptables_chain("KUBE-SVC-"),
            web.iptables_chain("KUBE-SVL-"),
        );
        let ext_rules = lines_of(&out, &format!("-A {ext} "));
        assert_eq!(ext_rules.len(), 4, "{out}");
        assert!(
            ext_rules[0].starts_with(&format!("-A {ext} -s 10.244.0.0/16 "))
                && ext_rules[0].ends_with(&format!("-j {svc}"))
        );
        assert!(ext_rules[1].contains("--src-type LOCAL -j KUBE-MARK-MASQ"));
        assert!(ext_rules[2].contains(&format!("--src-type LOCAL -j {svc}")));
        assert_eq!(ext_rules[3], format!("-A {ext} -j {svl}"));
        let local = lines_of(&out, &format!("-A {svl} "));
        assert_eq!(local.len(), 1, "{out}");
        assert!(local[0].ends_with(&format!("-j {}", web.iptables_sep_chain(&web.endpoints[0]))));
        // Without local endpoints, outside traffic is dropped in filter.
        let remote_only = web.with_endpoints(vec![Endpoint {
            ip: Ipv4Addr::new(10, 244, 2, 3).into(),
            port: 8080,
            local: false,
        }]);
        let out = iptables_restore_input(
            &ClusterSettings::new(CLUSTER_CIDR),
            Family::V4,
            &[remote_only],
            "",
        );
        assert!(!out.contains(&format!(":{svl}")), "{out}");
        assert!(out.contains("has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j DROP"), "{out}");
    }

    #[test]
    fn iptables_service_without_endpoints_is_rejected_in_filter() {
        let empty = Service::new(
            "default/empty",
            Ipv4Addr::new(10, 96, 0, 99),
            80,
            Protocol::Tcp,
        );
        let out = iptables_restore_input(
            &ClusterSettings::new(CLUSTER_CIDR),
            Family::V4,
            &[empty],
            "",
        );
        assert!(out.contains("-A KUBE-SERVICES -m comment --comment \"default/empty has no endpoints\" -m tcp -p tcp -d 10.96.0.99/32 --dport 80 -j REJECT"), "{out}");
        assert!(!out.contains("KUBE-SVC-"), "{out}");
    }

    #[test]
    fn iptables_stale_chains_are_deleted_and_flush_removes_everything() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-OLDOLDOLDOLDOLDO - [0:0]\n:KUBE-SEP-OLDOLDOLDOLDOLDO - [0:0]\n:CNI-1234 - [0:0]\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n";
        let out = iptables_restore_input(
            &ClusterSettings::new(CLUSTER_CIDR),
            Family::V4,
            &[dns()],
            saved,
        );
        assert!(
            out.contains(":KUBE-SVC-OLDOLDOLDOLDOLDO - [0:0]")
                && out.contains("-X KUBE-SVC-OLDOLDOLDOLDOLDO"),
            "{out}"
        );
        assert!(out.contains("-X KUBE-SEP-OLDOLDOLDOLDOLDO"), "{out}");
        assert!(!out.contains("CNI-1234"), "{out}");
        let nat = &out[out.find("*nat").unwrap()..];
        assert!(
            nat.find("-X KUBE-SVC-OLD").unwrap() > nat.rfind("-A ").unwrap(),
            "{nat}"
        );

        let flush = iptables_flush_input(saved);
        assert!(
            flush.contains(
                "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
            ),
            "{flush}"
        );
        for chain in [
            "KUBE-SERVICES",
            "KUBE-SVC-OLDOLDOLDOLDOLDO",
            "KUBE-SEP-OLDOLDOLDOLDOLDO",
        ] {
            assert!(flush.contains(&format!("-X {chain}")), "{flush}");
        }
        assert!(!flush.contains("CNI-1234"), "{flush}");
    }

    #[test]
    fn nft_table_dispatches_through_verdict_maps() {
        let web = web();
        let out = nft_script(
            &ClusterSettings::new(CLUSTER_CIDR),
            Family::V4,
            &[web.clone(), dns()],
        );
        assert!(
            out.starts_with(
                "add table ip kube-proxy\ndelete table ip kube-proxy\ntable ip kube-proxy {"
            ),
            "{out}"
        );
        let service = web.nft_chain("service-");
        let external = web.nft_chain("external-");
        for text in [
            format!("10.96.0.20 . tcp . 80 : goto {service}"),
            format!("10.200.0.10 . tcp . 80 : goto {external}"),
            format!("10.200.1.10 . tcp . 80 : goto {external}"),
            format!("tcp . 30080 : goto {external}"),
            "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips".to_string(),
            "add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports".to_string(),
            "add rule ip kube-proxy nat-prerouting jump services".to_string(),
            "add rule ip kube-proxy nat-output jump services".to_string(),
            "add rule ip kube-proxy nat-postrouting jump masquerading".to_string(),
            "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x00004000".to_string(),
            "add rule ip kube-proxy masquerading mark and 0x00004000 == 0 return".to_string(),
            "add rule ip kube-proxy masquerading mark set mark xor 0x00004000".to_string(),
            "add rule ip kube-proxy masquerading masquerade fully-random".to_string(),
            "add rule ip kube-proxy filter-forward ct state invalid drop".to_string(),
            format!("add rule ip kube-proxy {service} ip daddr 10.96.0.20 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"),
            format!("add rule ip kube-proxy {external} jump mark-for-masquerade"),
            format!("add rule ip kube-proxy {external} goto {service}"),
        ] {
            assert!(out.contains(&text), "missing {text:?} in\n{out}");
        }
        let endpoint = web.nft_endpoint_chain(&web.endpoints[1]);
        assert!(out.contains(&format!(
            "add rule ip kube-proxy {endpoint} ip saddr 10.244.2.3 jump mark-for-masquerade"
        )));
        assert!(out.contains(&format!(
            "add rule ip kube-proxy {endpoint} meta l4proto tcp dnat to 10.244.2.3:8080"
        )));
        assert!(
            out.contains(&format!(
                "{service} numgen random mod 2 vmap {{ 0 : goto {}, 1 : goto {endpoint} }}",
                web.nft_endpoint_chain(&web.endpoints[0])
            )),
            "{out}"
        );
        // Chains are declared before the maps that jump to them.
        assert!(
            out.find(&format!("chain {service} {{")).unwrap()
                < out.find("map service-ips").unwrap()
        );
    }

    #[test]
    fn nft_local_policy_and_node_port_addresses() {
        let web = web().external_traffic_policy(TrafficPolicy::Local);
        let mut settings = ClusterSettings::new(CLUSTER_CIDR);
        settings.node_ips = vec![Ipv4Addr::new(10, 250, 0, 1).into()];
        let out = nft_script(&settings, Family::V4, std::slice::from_ref(&web));
        let (service, external, local) = (
            web.nft_chain("service-"),
            web.nft_chain("external-"),
            web.nft_chain("local-"),
        );
        let external_rules = lines_of(&out, &format!("add rule ip kube-proxy {external} "));
        assert_eq!(external_rules.len(), 4, "{out}");
        assert!(external_rules[0].contains(&format!("ip saddr 10.244.0.0/16 goto {service}")));
        assert!(external_rules[1].contains("fib saddr type local jump mark-for-masquerade"));
        assert!(external_rules[2].contains(&format!("fib saddr type local goto {service}")));
        assert!(external_rules[3].ends_with(&format!("goto {local}")));
        assert!(
            out.contains(&format!(
                "add rule ip kube-proxy {local} numgen random mod 1 vmap {{ 0 : goto {} }}",
                web.nft_endpoint_chain(&web.endpoints[0])
            )),
            "{out}"
        );
        assert!(
            out.contains("set nodeport-ips {") && out.contains("elements = { 10.250.0.1 }"),
            "{out}"
        );
        assert!(
            out.contains(
                "services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
            ),
            "{out}"
        );
    }

    #[test]
    fn nft_service_without_endpoints_goes_to_the_reject_chain() {
        let empty = Service::new(
            "default/empty",
            Ipv4Addr::new(10, 96, 0, 99),
            80,
            Protocol::Tcp,
        )
        .node_port(30099);
        let out = nft_script(&ClusterSettings::new(CLUSTER_CIDR), Family::V4, &[empty]);
        assert!(
            out.contains("10.96.0.99 . tcp . 80 comment \"default/empty\" : goto reject-chain"),
            "{out}"
        );
        assert!(
            out.contains("tcp . 30099 comment \"default/empty\" : goto reject-chain"),
            "{out}"
        );
        assert!(!out.contains("-default/empty/tcp/"), "{out}");
    }

    const CLUSTER_CIDRS: &str = "10.244.0.0/16,fd00:10:244::/56";

    fn web6() -> Service {
        let v6 = |last: u16| Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, last);
        Service::new(
            "default/web",
            Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x20),
            80,
            Protocol::Tcp,
        )
        .port_name("http")
        .endpoint(v6(2), 8080, true)
        .node_port(30080)
    }

    #[test]
    fn families_come_from_the_cluster_cidr() {
        let dual = ClusterSettings::new(CLUSTER_CIDRS);
        assert_eq!(dual.families(), vec![Family::V4, Family::V6]);
        assert_eq!(dual.cluster_cidr_of(Family::V6), "fd00:10:244::/56");
        assert_eq!(dual.cluster_cidr_of(Family::V4), CLUSTER_CIDR);
        assert_eq!(
            ClusterSettings::new(CLUSTER_CIDR).families(),
            vec![Family::V4]
        );
        assert_eq!(web6().family(), Family::V6);
        assert_eq!(web6().endpoints[0].to_string(), "[fd00:10:244:1::2]:8080");
    }

    #[test]
    fn iptables_ipv6_rules_have_ipv6_shapes() {
        let web = web6();
        let out = iptables_restore_input(
            &ClusterSettings::new(CLUSTER_CIDRS),
            Family::V6,
            std::slice::from_ref(&web),
            "",
        );
        let svc = web.iptables_chain("KUBE-SVC-");
        let sep = web.iptables_sep_chain(&web.endpoints[0]);
        for rule in [
            format!(
                "-A KUBE-SERVICES -m comment --comment \"default/web:http cluster IP\" -m tcp -p tcp -d fd00:96::20/128 --dport 80 -j {svc}"
            ),
            format!(
                "-A {svc} -m comment --comment \"default/web:http cluster IP\" -m tcp -p tcp -d fd00:96::20/128 --dport 80 ! -s fd00:10:244::/56 -j KUBE-MARK-MASQ"
            ),
            format!(
                "-A {sep} -m comment --comment default/web:http -s fd00:10:244:1::2/128 -j KUBE-MARK-MASQ"
            ),
            format!(
                "-A {sep} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination [fd00:10:244:1::2]:8080"
            ),
            "-A KUBE-SERVICES ! -d ::1/128 -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".to_string(),
        ] {
            assert!(out.lines().any(|l| l == rule), "missing {rule:?} in\n{out}");
        }
        assert!(!out.contains("127.0.0.0/8"), "{out}");
        assert!(!out.contains("/32"), "{out}");
    }

    #[test]
    fn nft_ipv6_table_is_ip6() {
        let web = web6();
        let out = nft_script(
            &ClusterSettings::new(CLUSTER_CIDRS),
            Family::V6,
            std::slice::from_ref(&web),
        );
        assert!(
            out.starts_with(
                "add table ip6 kube-proxy\ndelete table ip6 kube-proxy\ntable ip6 kube-proxy {"
            ),
            "{out}"
        );
        let service = web.nft_chain("service-");
        let endpoint = web.nft_endpoint_chain(&web.endpoints[0]);
        for text in [
            "type ipv6_addr . inet_proto . inet_service : verdict".to_string(),
            format!("fd00:96::20 . tcp . 80 : goto {service}"),
            "add rule ip6 kube-proxy services ip6 daddr . meta l4proto . th dport vmap @service-ips".to_string(),
            "add rule ip6 kube-proxy services fib daddr type local ip6 daddr != ::1 meta l4proto . th dport vmap @service-nodeports".to_string(),
            format!("add rule ip6 kube-proxy {service} ip6 daddr fd00:96::20 tcp dport 80 ip6 saddr != fd00:10:244::/56 jump mark-for-masquerade"),
            format!("add rule ip6 kube-proxy {endpoint} ip6 saddr fd00:10:244:1::2 jump mark-for-masquerade"),
            format!("add rule ip6 kube-proxy {endpoint} meta l4proto tcp dnat to [fd00:10:244:1::2]:8080"),
        ] {
            assert!(out.contains(&text), "missing {text:?} in\n{out}");
        }
        assert!(
            endpoint.ends_with("-default/web/tcp/http__fd00.10.244.1..2/8080"),
            "{endpoint}"
        );
        assert!(
            !out.contains("ip daddr") && !out.contains("ipv4_addr"),
            "{out}"
        );
    }
}
