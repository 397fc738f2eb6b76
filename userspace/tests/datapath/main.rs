//! Unit tests of the datapath's tc programs (`from_pod`, `from_uplink`,
//! `to_pod`, `to_uplink`) with `BPF_PROG_TEST_RUN`: a crafted Ethernet frame
//! in, the verdict, the bytes out and the maps' side effects checked. No
//! interface: the packet never leaves the kernel call, and the programs and
//! maps are private to each test (see `harness`); tests of the node's own
//! sockets run in a network namespace of their own (`node_sockets`). They need root (CAP_BPF, CAP_SYS_ADMIN for the private
//! bpffs) and run in milliseconds; `cargo xtask test` runs them.
//!
//! Under test_run the redirect helpers (`bpf_redirect`, `bpf_redirect_peer`,
//! `bpf_redirect_neigh`) only record their target and return
//! `TC_ACT_REDIRECT`: the tests assert that verdict, and the target
//! interface is not observable.
//!
//! Every `DropReason` and `Verdict` a single packet can reach has a case:
//!
//! | counter | test |
//! |---------|------|
//! | local-delivery | `local::pod_to_pod_is_rewritten_and_redirected` |
//! | to-stack | `local::ttl_1_goes_to_the_stack`, `local::ipv6_link_local_goes_to_the_stack`, ... |
//! | arp-reply | `local::arp_request_is_answered_in_place` |
//! | nd-reply | `ipv6::neighbor_solicitation_is_answered_with_the_host_veths_mac` |
//! | forwarded | `masquerade::tcp_syn_is_masqueraded_with_its_own_port` |
//! | nat-new-flow | `masquerade::tcp_syn_is_masqueraded_with_its_own_port` |
//! | nat-port-retry | `masquerade::taken_port_is_retried_in_the_range`, `masquerade::a_port_of_the_nodes_own_sockets_is_never_kept` |
//! | nat-reply | `masquerade::reply_is_translated_back_and_delivered` |
//! | to-netfilter | `netfilter::service_address_goes_to_netfilter` |
//! | malformed | `local::arp_of_other_hardware_is_malformed`, `masquerade::truncated_icmp_error_is_malformed` |
//! | unknown-source | `local::unknown_source_is_dropped` |
//! | spoofed-source | `local::source_of_another_interface_is_dropped` |
//! | spoofed-mac | `local::foreign_mac_is_dropped` |
//! | spoofed-arp | `local::arp_spoofing_is_dropped` |
//! | unsupported-l3 | `local::unsupported_ethertypes_are_dropped` |
//! | nat-ports-exhausted | `masquerade::no_free_port_drops_the_packet` |
//! | nat-table-full | `masquerade::full_table_refuses_new_flows` |
//! | rewrite-failed | `masquerade::truncated_tcp_header_fails_the_rewrite` |
//! | rate-limited | `local::egress_over_the_limit_is_dropped`, `local::ingress_over_the_limit_is_dropped_for_the_receiver` |
//! | transit | `uplink::guard_drops_transit_and_passes_the_rest` |
//! | spoofed-nd | `ipv6::neighbor_discovery_lies_are_dropped` |
//!
//! Not testable here: `malformed` for a truncated IPv4 header (from_pod's
//! first check): the kernel refuses to run a tc program on an IPv4 frame
//! shorter than an IPv4 header (`EINVAL` on 6.18), so `malformed` is
//! covered through ARP and an ICMP error's quote instead.
//!
//! Not reachable from a packet: `redirect-failed`. `bpf_redirect_peer`,
//! `bpf_redirect_neigh` and `bpf_redirect` return something other than
//! `TC_ACT_REDIRECT` only for flags the datapath never passes (and for
//! `bpf_redirect_neigh` a parameter size it never passes); a redirect to a
//! missing or wrong device fails later, in `skb_do_redirect`, after the
//! program returned, where the datapath cannot count it.

mod fuzz;
mod harness;
mod host_ports;
mod ipv6;
mod ipv6_nat;
mod local;
mod masquerade;
mod netfilter;
mod node_sockets;
mod packet;
mod to_pod;
mod uplink;
mod world;
mod xdp;
