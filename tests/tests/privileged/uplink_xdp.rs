//! XDP on the uplink (`uplinkXdp`) kept in place by the agent: brought back
//! with a fresh pinned link when its pin is deleted, and not fought when an
//! operator's own XDP program stands there. The tc program serves the
//! uplink meanwhile. (A link detached behind the agent's back, its pin
//! kept, is in `agent.rs`.)

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use cni_ebpf_tests::{
    Netns, Node, Pod,
    agent::Agent,
    ext::{self, UdpEcho, with_keys},
    foreign_xdp::{self, ForeignXdp},
    hostports::HostPortNode,
    uplink::UPLINK,
    wait::wait_until,
};
use serde_json::{Value, json};

/// How long the agent may take to notice something (its tick is 1 s here).
const NOTICE: Duration = Duration::from_secs(10);

/// The XDP program `dev` runs in `ns` as the kernel reports it over
/// netlink (`ip -j link`): (id, name).
fn xdp_program(ns: &Netns, dev: &str) -> Option<(u64, String)> {
    let out = ns.ip(&["-j", "-d", "link", "show", "dev", dev]);
    let links: Vec<Value> = serde_json::from_str(&out).unwrap();
    let prog = &links[0]["xdp"]["prog"];
    Some((prog["id"].as_u64()?, prog["name"].as_str()?.to_string()))
}

/// A node masquerading to `ext` with XDP on its uplink, a pod and a UDP
/// echo server outside.
struct XdpNode {
    hp: HostPortNode,
    conf: Value,
    echo: UdpEcho,
}

impl XdpNode {
    fn new() -> Self {
        let hp = HostPortNode::new();
        // A NIC's whole checksums, as XDP needs them (see `ext::full_checksums`).
        ext::full_checksums(&hp.ext.netns, "eth0");
        let conf = with_keys(hp.conf(&[]), json!({ "ipMasq": true, "uplinkXdp": true }));
        let echo = UdpEcho::start(&hp.ext.netns, SocketAddrV4::new(hp.ext.ext_ip, 0), false)
            .expect("starting the UDP echo");
        Self { hp, conf, echo }
    }

    fn node(&self) -> &Node {
        &self.hp.node
    }

    fn pin(&self) -> PathBuf {
        self.node().bpffs_root().join("uplink-xdp").join(UPLINK)
    }

    fn socket(&self, pod: &Pod<'_>) -> UdpSocket {
        pod.netns()
            .run(|| {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                socket.connect(self.echo.addr())?;
                Ok::<_, std::io::Error>(socket)
            })
            .expect("pod UDP socket")
    }

    /// Whether a UDP request from `socket` is answered (a masqueraded
    /// flow's reply), and whether XDP delivered the answer.
    fn request(&self, socket: &UdpSocket, payload: &[u8]) -> (bool, bool) {
        let before = self.node().verdict_packets("xdp-delivered");
        let answered = ext::udp_request(socket, payload, Duration::from_secs(2))
            .is_ok_and(|(_, echoed)| echoed == payload);
        (
            answered,
            self.node().verdict_packets("xdp-delivered") > before,
        )
    }

    /// Deletes the XDP link's pin, which held the link: the kernel detaches
    /// it (from a work queue, hence the wait).
    fn delete_pin(&self) {
        std::fs::remove_file(self.pin()).expect("removing the XDP link's pin");
        assert!(
            wait_until(Duration::from_secs(5), || xdp_program(
                self.node().netns(),
                UPLINK
            )
            .is_none()),
            "XDP still attached after its pin went"
        );
    }

    /// The program id of the link pinned at `pin` (`bpftool link show`).
    fn pinned_program(&self) -> Option<u64> {
        let out = self.node().netns().exec(
            "bpftool",
            &["-j", "link", "show", "pinned", self.pin().to_str().unwrap()],
        );
        let link: Value = serde_json::from_slice(&out.stdout).ok()?;
        link["prog_id"].as_u64()
    }
}

#[test]
fn agent_restores_xdp_on_the_uplink_when_its_pin_is_deleted() {
    let x = XdpNode::new();
    let node = x.node();
    let pod = node.add_pod_with(x.conf.clone());
    let socket = x.socket(&pod);
    assert_eq!(
        x.request(&socket, b"baseline"),
        (true, true),
        "XDP delivers the answer"
    );

    x.delete_pin();
    assert!(!x.pin().exists());
    assert_eq!(x.request(&socket, b"tc only"), (true, false), "without XDP");

    let agent = Agent::start(node, &["--gc-interval", "1"]);
    agent
        .wait_for_line(NOTICE, |l| l.contains("(uplink xdp)"))
        .unwrap_or_else(|| {
            panic!(
                "the agent did not restore XDP on the uplink:\n{}",
                agent.stderr().join("\n")
            )
        });
    let (id, name) = xdp_program(node.netns(), UPLINK).expect("XDP on the uplink again");
    assert_eq!(name, "xdp_uplink");
    assert_eq!(x.pinned_program(), Some(id), "a fresh link under the pin");
    assert_eq!(
        x.request(&socket, b"xdp again"),
        (true, true),
        "after the repair"
    );
    // Once repaired, the next passes leave it alone.
    std::thread::sleep(Duration::from_secs(2));
    let metrics = agent.scrape();
    assert_eq!(
        metrics.value("cni_ebpf_reconcile_reattached_total", &[]),
        1.0
    );
    assert_eq!(metrics.value("cni_ebpf_uplink_xdp_foreign", &[]), 0.0);
    drop(agent);
    pod.check("1.0.0").expect_success("CHECK after the repair");
}

#[test]
fn agent_leaves_an_operators_xdp_program_on_the_uplink_and_counts_it() {
    let x = XdpNode::new();
    let node = x.node();
    let pod = node.add_pod_with(x.conf.clone());
    let socket = x.socket(&pod);
    assert_eq!(
        x.request(&socket, b"baseline"),
        (true, true),
        "XDP delivers the answer"
    );

    // The operator takes the uplink's XDP for a program of their own.
    x.delete_pin();
    let foreign = ForeignXdp::attach(node.netns(), UPLINK).expect("attaching operator_xdp");
    let (foreign_id, name) = xdp_program(node.netns(), UPLINK).unwrap();
    assert_eq!(name, foreign_xdp::NAME);

    // An ADD on the node with `uplinkXdp` neither fails nor replaces it.
    let second = node.add_pod_with(x.conf.clone());

    let agent = Agent::start(node, &["--gc-interval", "1"]);
    agent
        .wait_for_line(NOTICE, |l| {
            l.contains(&format!(
                "runs XDP program {foreign_id} ({})",
                foreign_xdp::NAME
            ))
        })
        .unwrap_or_else(|| {
            panic!(
                "the agent did not report the operator's program:\n{}",
                agent.stderr().join("\n")
            )
        });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        xdp_program(node.netns(), UPLINK).map(|(id, _)| id),
        Some(foreign_id),
        "the operator's program stays"
    );
    let metrics = agent.scrape();
    assert_eq!(metrics.value("cni_ebpf_uplink_xdp_foreign", &[]), 1.0);
    assert_eq!(
        metrics.value("cni_ebpf_reconcile_reattached_total", &[]),
        0.0
    );
    let stderr = agent.stderr();
    assert!(
        !stderr.iter().any(|l| l.contains("could not reattach")),
        "no attempt to replace it:\n{}",
        stderr.join("\n")
    );
    assert_eq!(
        stderr
            .iter()
            .filter(|l| l.contains("runs XDP program"))
            .count(),
        1,
        "warned once, not on every pass:\n{}",
        stderr.join("\n")
    );
    // The tc program serves both pods meanwhile.
    assert_eq!(x.request(&socket, b"tc behind operator_xdp"), (true, false));
    let second_socket = x.socket(&second);
    assert_eq!(x.request(&second_socket, b"second pod"), (true, false));

    // Once the operator takes theirs away, XDP comes back.
    drop(foreign);
    agent
        .wait_for_line(NOTICE, |l| l.contains("(uplink xdp)"))
        .unwrap_or_else(|| {
            panic!(
                "the agent did not restore XDP once the operator's program went:\n{}",
                agent.stderr().join("\n")
            )
        });
    assert_eq!(
        xdp_program(node.netns(), UPLINK).map(|(_, name)| name),
        Some("xdp_uplink".to_string())
    );
    assert_eq!(x.request(&socket, b"xdp again"), (true, true));
    std::thread::sleep(Duration::from_secs(2));
    let metrics = agent.scrape();
    assert_eq!(metrics.value("cni_ebpf_uplink_xdp_foreign", &[]), 0.0);
    assert_eq!(
        metrics.value("cni_ebpf_reconcile_reattached_total", &[]),
        1.0
    );
}
