//! `cni-ebpf-demo`: one node with three pods attached through the plugin,
//! shown reaching each other, with the datapath's tables and counters.
//! Everything lives in network namespaces made here, removed at the end
//! unless `--keep`.

use std::{net::IpAddr, process::ExitCode};

use cni_ebpf_tests::{Node, Pod, binaries, require_root, traffic};

const PODS: usize = 3;
const TRANSFER_BYTES: u64 = 32 * 1024 * 1024;

fn main() -> ExitCode {
    let keep = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--keep") => true,
        Some("-h" | "--help") => {
            println!(
                "usage: cni-ebpf-demo [--keep]\n\n  --keep  leave the namespaces in place and print how to inspect and remove them"
            );
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("cni-ebpf-demo: unknown argument {other:?} (try --help)");
            return ExitCode::FAILURE;
        }
    };
    require_root();

    let node = Node::new();
    println!(
        "node namespace {}  bpffsRoot {}",
        node.name(),
        node.bpffs_root().display()
    );
    let pods: Vec<Pod<'_>> = (0..PODS).map(|_| node.add_pod()).collect();
    println!(
        "\n{:<4} {:<24} {:<16} {:<16}",
        "POD", "NAMESPACE", "ADDRESS", "HOST VETH"
    );
    for (i, pod) in pods.iter().enumerate() {
        println!(
            "{:<4} {:<24} {:<16} {:<16}",
            i,
            pod.netns_name(),
            format!("{}/{}", pod.ip(), pod.prefix_len()),
            pod.host_ifname()
        );
    }

    let mut healthy = ping_matrix(&pods);
    healthy &= transfer(&pods[0], &pods[1]);

    for subcommand in ["endpoints", "stats", "drops"] {
        println!(
            "\n$ cni-ebpfd --bpffs-root {} {subcommand}",
            node.bpffs_root().display()
        );
        print!("{}", node.agent(subcommand, &[]));
    }

    if keep {
        print_keep_instructions(&node, &pods);
        // Leave every guard undropped: the namespaces, mount and files stay.
        std::mem::forget(pods);
        std::mem::forget(node);
    } else {
        drop(pods);
        drop(node);
        println!("\ncleaned up: pods deleted (CNI DEL), namespaces and bpffs removed");
    }
    if healthy {
        ExitCode::SUCCESS
    } else {
        eprintln!("cni-ebpf-demo: some pods could not reach each other");
        ExitCode::FAILURE
    }
}

/// Pings every pod from every other; prints the matrix; true if all
/// answered.
fn ping_matrix(pods: &[Pod<'_>]) -> bool {
    println!("\nping matrix (from row to column, 2 pings each)");
    print!("{:<6}", "");
    for j in 0..pods.len() {
        print!("{j:<6}");
    }
    println!();
    let mut all = true;
    for (i, from) in pods.iter().enumerate() {
        print!("{i:<6}");
        for (j, to) in pods.iter().enumerate() {
            if i == j {
                print!("{:<6}", "-");
                continue;
            }
            let ok = traffic::ping(from.netns(), IpAddr::V4(to.ip()), 2);
            all &= ok;
            print!("{:<6}", if ok { "ok" } else { "FAIL" });
        }
        println!();
    }
    all
}

/// A TCP stream from `client` to a server in `server`; prints the outcome.
fn transfer(client: &Pod<'_>, server: &Pod<'_>) -> bool {
    let mib = TRANSFER_BYTES / (1024 * 1024);
    print!("\nTCP {mib} MiB pod 0 -> pod 1: ");
    match traffic::tcp_transfer(
        server.netns(),
        client.netns(),
        IpAddr::V4(server.ip()),
        0,
        TRANSFER_BYTES,
    ) {
        Ok(t) if t.intact() => {
            let gbit = t.received_bytes as f64 * 8.0 / t.elapsed.as_secs_f64() / 1e9;
            // Both ends hash every byte in this process: a floor, not a benchmark.
            let build = if cfg!(debug_assertions) {
                ", debug build"
            } else {
                ""
            };
            println!(
                "ok, hash {:016x} on both ends, {:.2?} ({gbit:.1} Gbit/s{build})",
                t.received_hash, t.elapsed
            );
            true
        }
        Ok(t) => {
            println!("CORRUPTED: {t:?}");
            false
        }
        Err(e) => {
            println!("FAILED: {e}");
            false
        }
    }
}

fn print_keep_instructions(node: &Node, pods: &[Pod<'_>]) {
    let pod_ns: Vec<&str> = pods.iter().map(|p| p.netns_name()).collect();
    let agent = binaries::path(binaries::AGENT);
    println!("\nkept. node namespace: {}", node.name());
    println!("pod namespaces: {}", pod_ns.join(" "));
    println!(
        "bpffs mount: {}  state and IPAM files: {}",
        node.bpffs().mountpoint().display(),
        node.dir().display()
    );
    println!("\ninspect:");
    println!("  ip netns exec {} ping -c 2 {}", pod_ns[0], pods[1].ip());
    println!("  ip -n {} -d link", node.name());
    println!(
        "  {} --bpffs-root {} endpoints",
        agent.display(),
        node.bpffs_root().display()
    );
    println!("\nclean up:");
    println!(
        "  for ns in {} {}; do ip netns del $ns; done; umount {bpffs} && rmdir {bpffs}; rm -rf {dir}",
        node.name(),
        pod_ns.join(" "),
        bpffs = node.bpffs().mountpoint().display(),
        dir = node.dir().display()
    );
}
