//! Packet fuzzing: seeded random and mutated frames (IPv4, IPv6 with
//! neighbor discovery and ICMPv6 errors, ARP, other ethertypes) into
//! `from_pod`, `from_uplink`, `to_pod` and `to_uplink` of a node with
//! dual-stack pods, an uplink masquerading both families, services and a
//! host port, checking after every frame that the maps change only as a
//! packet may change them:
//!
//! - configuration maps (`HOST_PORTS`, `NODE_ADDRS`, `NODE_CONFIG`) never;
//! - `ENDPOINTS` only by gaining the netfilter-flows flag;
//! - a translated flow is admitted (`NAT_FLOWS` + 1) only by `from_pod` or
//!   `to_uplink`, for a frame whose IPv4 or IPv6 source is a pod's, at most
//!   one per frame; every `NAT_OUT` entry is a pod's flow to a destination
//!   outside the cluster translated to the masquerade address of its
//!   family, paired one to one with the `NAT_IN` entry of its replies, and
//!   `NAT_FLOWS` counts them;
//! - every frame the kernel runs through `from_pod`, and every frame any
//!   program redirects or drops, is counted exactly once (one verdict or
//!   one drop reason, besides the NAT events), a dropped one by a drop
//!   reason; a frame another program leaves to the stack is counted at
//!   most once, never as a drop.
//!
//! Bounded: `CNI_EBPF_PACKET_FUZZ_FRAMES` frames (20 000 by default) or
//! `CNI_EBPF_PACKET_FUZZ_SECONDS` (60), whichever ends first; `CNI_EBPF_PACKET_FUZZ_SEED` replays a run (the
//! seed is printed).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use cni_ebpf_common::{
    CtState, ENDPOINT_F_NETFILTER_FLOWS, Endpoint, FlowKey, HostPortKey, HostPortTarget,
    IPPROTO_TCP, IPPROTO_UDP, IpKey, NODE_F_MASQUERADE, NODE_F_SERVICES, NatEntry, NodeConfig,
    NodeConfigV6, map_names,
    program_names::{FROM_POD, FROM_UPLINK, TO_POD, TO_UPLINK},
    wire::{
        ETH_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT,
        ND_OPT_SOURCE_LL, ND_OPT_TARGET_LL, ND_REDIRECT, ND_ROUTER_ADVERT, ND_ROUTER_SOLICIT,
    },
};

use crate::{
    harness::{Datapath, Skb, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, with_datapath},
    ipv6::{NODE6, OTHER_NODE_POD6, POD_A6, POD_B6, REMOTE6, dual_stack_pods, key6},
    packet::{Arp, Frame, Frame6, L4, L4v6, ethernet, nd_body},
    world::*,
};

/// The cluster's IPv6 pod CIDR (`ipv6::uplink6`'s): flows into it keep
/// their source.
const CLUSTER6: (Ipv6Addr, u32) = (Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0), 32);

const PROGRAMS: [&str; 4] = [FROM_POD, FROM_UPLINK, TO_POD, TO_UPLINK];
/// Counters that mark an event inside a packet's handling, not its fate
/// (a translated reply is then delivered or dropped, and counted so).
const EVENTS: [&str; 3] = ["nat-new-flow", "nat-port-retry", "nat-reply"];
/// Admission limit: below the harness's map size (no LRU eviction), low
/// enough that `nat-table-full` is reached.
const NAT_MAX_FLOWS: u32 = 256;
const HOST_PORT: u16 = 8080;
/// The full scan of the NAT maps runs this often (and at the end).
const SCAN_EVERY: u64 = 1000;

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn address(rng: &mut Rng) -> Ipv4Addr {
    if rng.chance(8) {
        return Ipv4Addr::from(rng.next() as u32);
    }
    rng.pick(&[
        POD_A,
        POD_B,
        NODE,
        REMOTE,
        OTHER_NODE_POD,
        DNS_SERVICE,
        Ipv4Addr::new(10, 244, 1, 99),
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::BROADCAST,
        Ipv4Addr::UNSPECIFIED,
    ])
}

fn mac(rng: &mut Rng) -> [u8; 6] {
    if rng.chance(8) {
        let mut mac = [0; 6];
        mac.copy_from_slice(&rng.bytes(6));
        return mac;
    }
    rng.pick(&[
        POD_A_MAC, HOST_A_MAC, POD_B_MAC, HOST_B_MAC, UPLINK_MAC, ROUTER_MAC, [0xff; 6],
    ])
}

fn port(rng: &mut Rng) -> u16 {
    if rng.chance(3) {
        return rng.next() as u16;
    }
    rng.pick(&[
        40000,
        80,
        53,
        HOST_PORT,
        NAT_PORT_MIN,
        NAT_PORT_MIN + 1,
        0,
        65535,
    ])
}

fn transport(rng: &mut Rng, depth: u32) -> L4 {
    match rng.below(if depth > 0 { 4 } else { 5 }) {
        0 => L4::Tcp {
            sport: port(rng),
            dport: port(rng),
            flags: rng.next() as u8,
        },
        1 => L4::Udp {
            sport: port(rng),
            dport: port(rng),
            checksum: rng.chance(2),
        },
        2 => L4::Echo {
            request: rng.chance(2),
            id: port(rng),
            seq: rng.next() as u16,
        },
        3 => {
            let len = rng.below(48);
            L4::Raw {
                proto: {
                    let any = rng.next() as u8;
                    rng.pick(&[IPPROTO_TCP, IPPROTO_UDP, 1, 47, 132, any])
                },
                bytes: rng.bytes(len),
            }
        }
        _ => {
            // An ICMP error quoting a (possibly truncated) packet.
            let mut quote = ip_frame(rng, depth + 1).ip_packet();
            quote.truncate(rng.below(quote.len() + 1));
            L4::IcmpError {
                kind: {
                    let any = rng.next() as u8;
                    rng.pick(&[3, 11, 12, 5, any])
                },
                code: {
                    let any = rng.next() as u8;
                    rng.pick(&[0, 1, 3, 4, any])
                },
                quote,
            }
        }
    }
}

fn ip_frame(rng: &mut Rng, depth: u32) -> Frame {
    let mut frame = Frame::new(
        mac(rng),
        mac(rng),
        address(rng),
        address(rng),
        transport(rng, depth),
    );
    frame.ttl = rng.pick(&[64, 64, 1, 0, 2, 255]);
    frame.frag = {
        let any = rng.next() as u16;
        rng.pick(&[0, 0, 0x4000, 0x2000, 0x0001, any])
    };
    frame
}

/// Mostly a frame the program would meet: from pod A (whose host veth the
/// test runs on) into `from_pod`, from outside to the node or a pod into
/// `from_uplink`, and so on; anything else is mostly dropped at the door.
fn aimed_ip_frame(rng: &mut Rng, program: &str) -> Frame {
    let mut frame = ip_frame(rng, 0);
    if rng.chance(3) {
        return frame;
    }
    match program {
        FROM_POD => {
            (frame.eth_src, frame.eth_dst, frame.src) = (POD_A_MAC, HOST_A_MAC, POD_A);
        }
        FROM_UPLINK => {
            frame.eth_dst = UPLINK_MAC;
            frame.src = rng.pick(&[REMOTE, OTHER_NODE_POD, frame.src]);
            frame.dst = rng.pick(&[NODE, NODE, POD_A, POD_B]);
        }
        TO_UPLINK => {
            frame.src = rng.pick(&[POD_A, POD_B, NODE]);
            frame.dst = rng.pick(&[REMOTE, REMOTE, OTHER_NODE_POD, frame.dst]);
        }
        _ => {
            frame.dst = rng.pick(&[POD_A, POD_B]);
            frame.src = rng.pick(&[REMOTE, DNS_SERVICE, NODE, POD_B, frame.src]);
        }
    }
    frame
}

fn address6(rng: &mut Rng) -> Ipv6Addr {
    if rng.chance(8) {
        return Ipv6Addr::from(u128::from(rng.next()) << 64 | u128::from(rng.next()));
    }
    rng.pick(&[
        POD_A6,
        POD_B6,
        NODE6,
        REMOTE6,
        OTHER_NODE_POD6,
        Ipv6Addr::from(IpKey::link_local(POD_A_MAC).addr),
        Ipv6Addr::from(IpKey::link_local(POD_B_MAC).addr),
        Ipv6Addr::new(0xfd00, 0x10, 0, 1, 0, 0, 0, 1),
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2),
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2),
        Ipv6Addr::LOCALHOST,
        Ipv6Addr::UNSPECIFIED,
        Ipv4Addr::new(10, 244, 1, 2).to_ipv6_mapped(),
    ])
}

fn transport6(rng: &mut Rng, depth: u32) -> L4v6 {
    match rng.below(if depth > 0 { 5 } else { 7 }) {
        0 => L4v6::Tcp {
            sport: port(rng),
            dport: port(rng),
            flags: rng.next() as u8,
        },
        1 => L4v6::Udp {
            sport: port(rng),
            dport: port(rng),
        },
        2 => L4v6::Echo {
            id: port(rng),
            seq: rng.next() as u16,
        },
        3 => L4v6::EchoReply {
            id: port(rng),
            seq: rng.next() as u16,
        },
        4 => {
            let len = rng.below(40);
            L4v6::Icmp {
                kind: {
                    let any = rng.next() as u8;
                    rng.pick(&[1, 128, 130, 143, any])
                },
                body: rng.bytes(len),
            }
        }
        5 => {
            // Neighbor discovery: solicitations, advertisements (lies
            // included), router messages and redirects.
            let kind = rng.pick(&[
                ND_NEIGHBOR_SOLICIT,
                ND_NEIGHBOR_ADVERT,
                ND_ROUTER_SOLICIT,
                ND_ROUTER_ADVERT,
                ND_REDIRECT,
            ]);
            let option = rng.chance(2).then(|| {
                let any = rng.next() as u8;
                (
                    rng.pick(&[ND_OPT_SOURCE_LL, ND_OPT_TARGET_LL, any]),
                    mac(rng),
                )
            });
            let mut body = nd_body(rng.next() as u8, address6(rng), option);
            if rng.chance(4) {
                body.truncate(rng.below(body.len() + 1));
            }
            L4v6::Icmp { kind, body }
        }
        _ => {
            // An ICMPv6 error quoting a (possibly truncated) packet.
            let mut quote = ip_frame6(rng, depth + 1).ip_packet();
            quote.truncate(rng.below(quote.len() + 1));
            L4v6::IcmpError {
                kind: {
                    let any = rng.next() as u8;
                    rng.pick(&[1, 2, 3, 4, any])
                },
                quote,
            }
        }
    }
}

fn ip_frame6(rng: &mut Rng, depth: u32) -> Frame6 {
    let mut frame = Frame6::new(
        mac(rng),
        mac(rng),
        address6(rng),
        address6(rng),
        transport6(rng, depth),
    );
    frame.hop_limit = rng.pick(&[64, 64, 255, 1, 0, 2]);
    frame
}

/// [`aimed_ip_frame`] for IPv6.
fn aimed_ip_frame6(rng: &mut Rng, program: &str) -> Frame6 {
    let mut frame = ip_frame6(rng, 0);
    if rng.chance(3) {
        return frame;
    }
    match program {
        FROM_POD => {
            (frame.eth_src, frame.eth_dst) = (POD_A_MAC, HOST_A_MAC);
            frame.src = rng.pick(&[
                POD_A6,
                POD_A6,
                Ipv6Addr::from(IpKey::link_local(POD_A_MAC).addr),
                Ipv6Addr::UNSPECIFIED,
            ]);
        }
        FROM_UPLINK => {
            frame.eth_dst = UPLINK_MAC;
            frame.src = rng.pick(&[REMOTE6, OTHER_NODE_POD6, frame.src]);
            frame.dst = rng.pick(&[NODE6, NODE6, POD_A6, POD_B6]);
        }
        TO_UPLINK => {
            frame.src = rng.pick(&[POD_A6, POD_B6, NODE6]);
            frame.dst = rng.pick(&[REMOTE6, REMOTE6, OTHER_NODE_POD6, frame.dst]);
        }
        _ => {
            frame.dst = rng.pick(&[POD_A6, POD_B6]);
            frame.src = rng.pick(&[REMOTE6, NODE6, POD_B6, frame.src]);
        }
    }
    frame
}

/// A few bits flipped, cut short, or a byte changed and junk appended.
fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    match rng.below(3) {
        0 => {
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        1 => bytes.truncate(ETH_LEN + rng.below(bytes.len() - ETH_LEN + 1)),
        _ => {
            let at = rng.below(bytes.len());
            bytes[at] = rng.next() as u8;
            let extra = rng.below(32);
            bytes.extend(rng.bytes(extra));
        }
    }
    bytes
}

/// One frame: well-formed or mutated IPv4 or IPv6, ARP, or another
/// ethertype.
fn frame(rng: &mut Rng, program: &str) -> Vec<u8> {
    match rng.below(16) {
        0..=4 => aimed_ip_frame(rng, program).bytes(),
        5..=7 => {
            let bytes = aimed_ip_frame(rng, program).bytes();
            mutate(rng, bytes)
        }
        8..=10 => aimed_ip_frame6(rng, program).bytes(),
        11..=13 => {
            let bytes = aimed_ip_frame6(rng, program).bytes();
            mutate(rng, bytes)
        }
        14 => {
            let mut arp = Arp::request(mac(rng), address(rng), address(rng));
            if rng.chance(3) {
                arp.op = rng.next() as u16;
            }
            if rng.chance(4) {
                arp.htype = rng.next() as u16;
            }
            let mut bytes = arp.bytes();
            if rng.chance(4) {
                bytes.truncate(ETH_LEN + rng.below(29));
            }
            bytes
        }
        _ => {
            let ether_type = {
                let any = rng.next() as u16;
                rng.pick(&[ETH_P_IP, ETH_P_ARP, ETH_P_IPV6, 0x8100, any])
            };
            let len = rng.below(96);
            ethernet(mac(rng), mac(rng), ether_type, &rng.bytes(len))
        }
    }
}

/// Dual-stack pods A (publishing a host port) and B, an uplink
/// masquerading both families with a port range to retry in, a service
/// range (kube-proxy).
fn node(dp: &mut Datapath) {
    dual_stack_pods(dp);
    dp.set_node_config_v6(NodeConfigV6 {
        masq_addr: NODE6.octets(),
        flags: NODE_F_MASQUERADE,
        ephemeral_min: 32768,
        ephemeral_max: 60999,
    });
    dp.add_no_masq_v6(key6(CLUSTER6.0), CLUSTER6.1);
    dp.set_node_config(NodeConfig {
        masq_addr: key(NODE).addr,
        uplink_ifindex: UPLINK_IFINDEX,
        flags: NODE_F_MASQUERADE | NODE_F_SERVICES,
        nat_port_min: NAT_PORT_MIN,
        nat_port_max: NAT_PORT_MIN + 63,
        nat_max_flows: NAT_MAX_FLOWS,
        ..Default::default()
    });
    dp.add_no_masq(key(CLUSTER_CIDR.0), CLUSTER_CIDR.1);
    dp.add_service_cidr(key(SERVICE_CIDR.0), SERVICE_CIDR.1);
    publishes(dp);
    dp.add_host_port(
        HostPortKey {
            host_addr: IpKey::default().addr,
            port: HOST_PORT.to_be(),
            proto: IPPROTO_TCP,
            wildcard: 0,
        },
        HostPortTarget {
            pod_addr: key(POD_A).addr,
            pod_port: 80u16.to_be(),
            ..Default::default()
        },
    );
}

/// The maps no packet may change, as they are.
#[derive(Debug, PartialEq)]
struct Configuration {
    host_ports: Vec<(HostPortKey, HostPortTarget)>,
    node_addrs: Vec<(IpKey, u8)>,
}

impl Configuration {
    fn read(dp: &Datapath) -> Self {
        Self {
            host_ports: dp.entries(map_names::HOST_PORTS),
            node_addrs: dp.entries(map_names::NODE_ADDRS),
        }
    }
}

fn endpoints(dp: &Datapath) -> BTreeMap<[u8; 16], Endpoint> {
    dp.entries::<IpKey, Endpoint>(map_names::ENDPOINTS)
        .into_iter()
        .map(|(key, endpoint)| (key.addr, endpoint))
        .collect()
}

/// The IPv4 or IPv6 source address of a frame, as a map key.
fn ip_source(frame: &[u8]) -> Option<IpKey> {
    let ether_type = frame.get(12..14)?;
    if ether_type == ETH_P_IP.to_be_bytes() {
        let src = frame.get(ETH_LEN + 12..ETH_LEN + 16)?;
        return Some(key(Ipv4Addr::new(src[0], src[1], src[2], src[3])));
    }
    if ether_type == ETH_P_IPV6.to_be_bytes() {
        let src: [u8; 16] = frame.get(ETH_LEN + 8..ETH_LEN + 24)?.try_into().ok()?;
        return Some(key6(Ipv6Addr::from(src)));
    }
    None
}

/// The pods' addresses of both families.
fn pod_keys() -> [IpKey; 4] {
    [key(POD_A), key(POD_B), key6(POD_A6), key6(POD_B6)]
}

/// Whether `addr` (a map key) lies in the cluster's CIDR of its family.
fn in_cluster(addr: [u8; 16]) -> bool {
    let (net, prefix) = match (IpKey { addr }).as_v4() {
        Some(_) => (key(CLUSTER_CIDR.0).addr, 96 + CLUSTER_CIDR.1),
        None => (CLUSTER6.0.octets(), CLUSTER6.1),
    };
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from_be_bytes(addr) & mask == u128::from_be_bytes(net) & mask
}

/// Every `NAT_OUT` entry is a pod's flow out of the cluster, translated to
/// the node, and `NAT_IN` holds exactly the replies of those flows.
fn check_nat_tables(dp: &Datapath) {
    let out: Vec<(FlowKey, NatEntry)> = dp.entries(map_names::NAT_OUT);
    let replies: BTreeMap<Vec<u8>, (FlowKey, NatEntry)> = dp
        .entries::<FlowKey, NatEntry>(map_names::NAT_IN)
        .into_iter()
        .map(|(key, entry)| (format!("{key:?}").into_bytes(), (key, entry)))
        .collect();
    assert_eq!(out.len(), replies.len(), "NAT_OUT and NAT_IN pair up");
    assert_eq!(
        dp.nat_flows(),
        out.len() as u64,
        "NAT_FLOWS counts the flows"
    );
    for (flow, translated) in &out {
        assert!(
            pod_keys().iter().any(|pod| pod.addr == flow.src),
            "a NAT flow from a non-pod: {flow:?}"
        );
        assert!(
            !in_cluster(flow.dst),
            "a NAT flow into the cluster: {flow:?}"
        );
        let masquerade = match (IpKey { addr: flow.src }).as_v4() {
            Some(_) => key(NODE),
            None => key6(NODE6),
        };
        assert_eq!(translated.addr, masquerade.addr, "{flow:?}");
        let family_of = |addr: [u8; 16]| (IpKey { addr }).as_v4().is_some();
        assert_eq!(family_of(flow.dst), family_of(flow.src), "{flow:?}");
        let reply = FlowKey {
            src: flow.dst,
            dst: translated.addr,
            src_port: flow.dst_port,
            dst_port: translated.port,
            proto: flow.proto,
            _pad: [0; 3],
        };
        let (_, back) = replies
            .get(format!("{reply:?}").as_bytes())
            .unwrap_or_else(|| panic!("no NAT_IN entry for the replies of {flow:?}"));
        assert_eq!(
            (back.addr, back.port),
            (flow.src, flow.src_port),
            "{flow:?}"
        );
        // Each direction keeps its own state (FIN one way, ACK the other).
        for state in [back.state, translated.state] {
            assert!(CtState::from_u8(state).is_some(), "state {state}: {flow:?}");
        }
    }
}

fn deltas(before: &[(String, u64)], after: &[(String, u64)]) -> BTreeMap<String, u64> {
    let before: BTreeMap<&str, u64> = before.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    after
        .iter()
        .filter_map(|(name, packets)| {
            let delta = packets - before.get(name.as_str()).copied().unwrap_or(0);
            (delta != 0).then(|| (name.clone(), delta))
        })
        .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

#[test]
fn random_and_mutated_frames_change_maps_only_as_packets_may() {
    let frames = env_u64("CNI_EBPF_PACKET_FUZZ_FRAMES").unwrap_or(20_000);
    let seed = env_u64("CNI_EBPF_PACKET_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    println!("packet fuzz: seed {seed} (CNI_EBPF_PACKET_FUZZ_SEED replays it)");
    let mut rng = Rng(seed);

    with_datapath(|dp| {
        node(dp);
        let configuration = Configuration::read(dp);
        let first_endpoints = endpoints(dp);
        let mut endpoints_now = first_endpoints.clone();
        let wall_limit = Duration::from_secs(env_u64("CNI_EBPF_PACKET_FUZZ_SECONDS").unwrap_or(60));
        let started = Instant::now();
        let mut ran = 0u64;
        let mut refused = 0u64;
        let mut fates: BTreeMap<String, u64> = BTreeMap::new();
        let mut actions: BTreeMap<(&str, i32), u64> = BTreeMap::new();

        for index in 0..frames {
            if started.elapsed() > wall_limit {
                println!("packet fuzz: stopped at the time limit after {index} frames");
                break;
            }
            let program = rng.pick(&PROGRAMS);
            let bytes = frame(&mut rng, program);
            let skb = Skb {
                mark: {
                    let any = rng.next() as u32;
                    rng.pick(&[0, 0, 0x0040_0000, any])
                },
                ..Skb::default()
            };
            let counts_before = dp.counts();
            let flows_before = dp.nat_flows();
            let outcome = match dp.try_run(program, &bytes, skb) {
                Ok(outcome) => outcome,
                Err(error) => {
                    // Only frames too short for their ethertype are refused.
                    let text = format!("{error:?}");
                    assert!(
                        text.contains("22") || text.contains("Invalid argument"),
                        "{program} refused a {}-byte frame: {text}",
                        bytes.len()
                    );
                    refused += 1;
                    continue;
                }
            };
            ran += 1;
            let context = || format!("frame {index} into {program}: {bytes:02x?}");
            *actions.entry((program, outcome.action)).or_default() += 1;
            assert!(
                [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&outcome.action),
                "verdict {} for {}",
                outcome.action,
                context()
            );

            let moved = deltas(&counts_before, &dp.counts());
            let fate: Vec<(&String, &u64)> = moved
                .iter()
                .filter(|(name, _)| !EVENTS.contains(&name.as_str()))
                .collect();
            // from_pod counts every frame; the others count what they
            // redirect or drop, not every frame they leave to the stack
            // (the uplink carries the node's own traffic too).
            if program == FROM_POD || outcome.action != TC_ACT_OK {
                assert!(
                    fate.len() == 1 && *fate[0].1 == 1,
                    "verdict {} counted as {moved:?} for {}",
                    outcome.action,
                    context()
                );
                let dropped = fate[0].0.starts_with("drop ");
                assert_eq!(
                    dropped,
                    outcome.action == TC_ACT_SHOT,
                    "verdict {} counted as {moved:?} for {}",
                    outcome.action,
                    context()
                );
            } else {
                assert!(
                    fate.len() <= 1 && fate.iter().all(|(name, _)| !name.starts_with("drop ")),
                    "verdict {} counted as {moved:?} for {}",
                    outcome.action,
                    context()
                );
            }
            for (name, _) in fate {
                *fates.entry(format!("{program}: {name}")).or_default() += 1;
            }

            let flows = dp.nat_flows();
            if flows != flows_before {
                assert_eq!(flows, flows_before + 1, "{}", context());
                assert!(
                    program == FROM_POD || program == TO_UPLINK,
                    "{program} admitted a NAT flow: {}",
                    context()
                );
                let source = ip_source(&bytes);
                assert!(
                    source.is_some_and(|s| pod_keys().contains(&s)),
                    "a NAT flow for source {source:?}: {}",
                    context()
                );
                assert!(moved.contains_key("nat-new-flow"), "{}", context());
            } else {
                assert!(!moved.contains_key("nat-new-flow"), "{}", context());
            }

            assert_eq!(Configuration::read(dp), configuration, "{}", context());
            let now = endpoints(dp);
            if now != endpoints_now {
                for (addr, endpoint) in &now {
                    let first = first_endpoints.get(addr).expect("no endpoint appears");
                    let unflagged = Endpoint {
                        flags: endpoint.flags & !ENDPOINT_F_NETFILTER_FLOWS,
                        ..*endpoint
                    };
                    assert_eq!(&unflagged, first, "{}", context());
                    assert!(
                        endpoint.flags & endpoints_now[addr].flags == endpoints_now[addr].flags,
                        "a flag was cleared: {}",
                        context()
                    );
                }
                assert_eq!(now.len(), first_endpoints.len(), "{}", context());
                endpoints_now = now;
            }
            if index % SCAN_EVERY == SCAN_EVERY - 1 {
                check_nat_tables(dp);
            }
        }
        check_nat_tables(dp);

        let elapsed = started.elapsed();
        println!(
            "packet fuzz: {ran} frames run, {refused} refused by the kernel (too short), \
             {} NAT flows admitted, {:.1} s",
            dp.nat_flows(),
            elapsed.as_secs_f64()
        );
        for ((program, action), count) in &actions {
            println!("  {program} verdict {action}: {count}");
        }
        for (fate, count) in &fates {
            println!("  {fate}: {count}");
        }
        assert!(ran > frames / 2, "most frames must run");
    });
}
