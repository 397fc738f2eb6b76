//! Fault injection: the plugin killed with SIGKILL at every point of ADD
//! and DEL (a timed kill loop over delays that cover the whole call, as a
//! runtime's timeout does), then what a runtime does next (DEL, or GC with
//! the attachments it still has), and nothing may be left: no host veth,
//! pod interface, route, endpoint or per-endpoint map entry, link pin, IPAM
//! reservation or state record. Both attach modes. A killed plugin's IPAM
//! and state locks are flocks, which die with it: the next call proceeds.

use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use cni_ebpf_tests::{
    CniRequest, Node,
    node::DEFAULT_NETWORK,
    spec::{Footprint, Sandbox},
};
use serde_json::{Value, json};

use crate::{pod_links, upgrade::tc_filter_ids};

/// Delays are spread over this multiple of an uninterrupted call.
const COVER: f64 = 1.3;
/// At most this many kill points per loop (1 ms apart when the call is short).
const MAX_POINTS: u64 = 48;
/// Whole loop's budget: it stops early rather than run past it.
const LOOP_BUDGET: Duration = Duration::from_secs(150);

/// Everything an attachment can leave on a node, beyond [`Footprint`]:
/// routes of the node, and the per-endpoint maps that `cni-ebpfd
/// endpoints` does not show.
#[derive(Debug, PartialEq)]
pub(crate) struct Leftovers {
    pub footprint: Footprint,
    pub routes: BTreeSet<String>,
    /// Entries of `ENDPOINT_STATS` and claimed slots of `ENDPOINT_COUNTERS`.
    pub endpoint_stats: usize,
    pub rate_limits: usize,
}

impl Leftovers {
    pub(crate) fn of(node: &Node) -> Self {
        let routes = node
            .netns()
            .exec_ok("ip", &["-4", "route", "show", "table", "all"])
            .lines()
            .map(str::to_string)
            .collect();
        Self {
            footprint: Footprint::of(node, DEFAULT_NETWORK),
            routes,
            endpoint_stats: pinned_map_entries(node, "ENDPOINT_STATS")
                + pinned_map_entries(node, "ENDPOINT_SLOTS"),
            rate_limits: pinned_map_entries(node, "RATE_LIMITS"),
        }
    }
}

/// Entries of the node's pinned map `name`, as `bpftool` dumps them.
pub(crate) fn pinned_map_entries(node: &Node, name: &str) -> usize {
    let path = node.bpffs_root().join("maps").join(name);
    let output = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("bpftool: {e}"));
    assert!(
        output.status.success(),
        "bpftool map dump {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let entries: Value = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    entries.as_array().map_or(0, Vec::len)
}

/// Starts one plugin call the way `Plugin::call` makes it, without waiting.
fn spawn(node: &Node, command: &str, sandbox: &Sandbox<'_>, conf: &Value) -> Child {
    let netns = sandbox.netns().path();
    spawn_raw(node, command, sandbox.id(), sandbox.name(), netns, conf)
}

fn spawn_raw(
    node: &Node,
    command: &str,
    container_id: &str,
    ifname: &str,
    netns: &std::path::Path,
    conf: &Value,
) -> Child {
    let conf = conf.to_string();
    let request = CniRequest {
        command,
        container_id,
        netns: Some(netns),
        ifname,
        args: None,
        stdin: conf.as_bytes(),
    };
    let mut process = request.command(node.netns(), node.plugin().binary());
    process
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = process.spawn().expect("spawning the plugin");
    let mut stdin = child.stdin.take().expect("stdin");
    // Fits in the pipe; a plugin killed before reading gives EPIPE.
    let _ = stdin.write_all(request.stdin);
    child
}

/// Kills `child` after `delay` (if it still runs); whether it had finished.
fn kill_after(mut child: Child, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        thread::sleep((deadline - now).min(Duration::from_micros(200)));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

fn conf(node: &Node, tcx: bool) -> Value {
    let mut conf = node.conf().cni_version("1.1.0").build();
    conf["attachMode"] = json!(if tcx { "tcx" } else { "clsact" });
    conf
}

/// Median wall time of a few uninterrupted calls of `command`.
fn call_time(node: &Node, conf: &Value, command: &str) -> Duration {
    let mut times: Vec<Duration> = (0..3)
        .map(|_| {
            let mut sandbox = Sandbox::new(node);
            let add = sandbox.add(conf);
            add.expect_result("ADD");
            let del = sandbox.del();
            del.expect_success("DEL");
            if command == "ADD" {
                add.elapsed
            } else {
                del.elapsed
            }
        })
        .collect();
    times.sort();
    times[1]
}

/// The kill points: from 0 to past the end of a call, 1 ms apart when
/// that is at most `MAX_POINTS` of them.
fn delays(call: Duration) -> Vec<Duration> {
    let span = call.as_secs_f64() * COVER;
    let step = (span / MAX_POINTS as f64).max(0.001);
    (0..=MAX_POINTS)
        .map(|i| Duration::from_secs_f64(step * i as f64))
        .take_while(|delay| delay.as_secs_f64() <= span.max(0.001))
        .collect()
}

/// What a runtime does about an attachment whose ADD or DEL died: DEL it
/// (even without a result), or, every third time, GC with only `kept` as a
/// valid attachment.
fn clean_up(node: &Node, sandbox: &mut Sandbox<'_>, conf: &Value, kept: &Sandbox<'_>, gc: bool) {
    if gc {
        let mut gc_conf = conf.clone();
        gc_conf["cni.dev/valid-attachments"] =
            json!([{ "containerID": kept.id(), "ifname": kept.name() }]);
        let stdin = gc_conf.to_string();
        node.cni(&CniRequest {
            command: "GC",
            container_id: "",
            netns: None,
            ifname: "",
            args: None,
            stdin: stdin.as_bytes(),
        })
        .expect_success("GC after the kill");
    } else {
        sandbox
            .call("DEL", conf)
            .expect_success("DEL after the kill");
    }
}

/// Kills `command` at every kill point of a node in `tcx` or clsact mode;
/// after each kill and clean-up the node must be as before, and a pod kept
/// throughout must still pass CHECK.
fn kill_loop(command: &str, tcx: bool) {
    let node = Node::new();
    let conf = conf(&node, tcx);
    // Loads the datapath, and a neighbour whose attachment must survive.
    let mut kept = Sandbox::new(&node);
    kept.add_ok(&conf);
    let baseline = Leftovers::of(&node);
    let call = call_time(&node, &conf, command);
    assert_eq!(Leftovers::of(&node), baseline, "uninterrupted calls leak");

    let points = delays(call);
    let started = Instant::now();
    let (mut killed, mut finished) = (0, 0);
    for (i, delay) in points.iter().enumerate() {
        if started.elapsed() > LOOP_BUDGET {
            eprintln!("[faults] {command} loop stopped at its time budget after {i} points");
            break;
        }
        let mut sandbox = Sandbox::new(&node);
        if command == "DEL" {
            sandbox.add_ok(&conf);
        }
        let child = spawn(&node, command, &sandbox, &conf);
        if kill_after(child, *delay) {
            finished += 1;
        } else {
            killed += 1;
        }
        clean_up(&node, &mut sandbox, &conf, &kept, i % 3 == 2);
        let left = Leftovers::of(&node);
        assert_eq!(
            left,
            baseline,
            "{command} ({}) killed after {delay:?}: left behind",
            if tcx { "tcx" } else { "clsact" }
        );
        assert_eq!(
            pod_links(sandbox.netns()),
            Vec::<String>::new(),
            "pod interface left after a kill at {delay:?}"
        );
    }
    kept.check()
        .expect_success("CHECK of the pod kept throughout");
    eprintln!(
        "[faults] {command} {}: uninterrupted {call:?}, {} kill points up to {:?}: {killed} killed \
         mid-call, {finished} finished first; nothing left behind",
        if tcx { "tcx" } else { "clsact" },
        points.len(),
        points.last().copied().unwrap_or_default()
    );
    assert!(killed > 0, "no kill landed inside the call");
}

#[test]
fn sigkill_at_every_point_of_add_leaves_nothing_after_del_or_gc() {
    kill_loop("ADD", false);
}

#[test]
fn sigkill_at_every_point_of_add_in_tcx_mode_leaves_nothing() {
    kill_loop("ADD", true);
}

#[test]
fn sigkill_at_every_point_of_del_leaves_nothing_after_del_or_gc() {
    kill_loop("DEL", false);
}

#[test]
fn sigkill_at_every_point_of_del_in_tcx_mode_leaves_nothing() {
    kill_loop("DEL", true);
}

/// The first ADD on a node loads and pins the datapath under a lock; a
/// plugin killed while doing so must not stop the next ADD.
#[test]
fn sigkill_during_the_first_load_does_not_wedge_the_node() {
    for delay_ms in [20, 150, 600] {
        let node = Node::new();
        let conf = conf(&node, false);
        let first = Sandbox::new(&node);
        let child = spawn(&node, "ADD", &first, &conf);
        let finished = kill_after(child, Duration::from_millis(delay_ms));
        first
            .call("DEL", &conf)
            .expect_success("DEL after the kill");
        let mut next = Sandbox::new(&node);
        next.add_ok(&conf);
        next.check().expect_success("CHECK of the next pod");
        next.del().expect_success("DEL of the next pod");
        let left = Footprint::of(&node, DEFAULT_NETWORK);
        assert!(
            left.host_veths.is_empty() && left.reservations.is_empty(),
            "after a kill at {delay_ms} ms (finished: {finished}): {left:?}"
        );
        assert_eq!(pod_links(first.netns()), Vec::<String>::new());
    }
}

/// Regression for what the kill above found: a loader that died after
/// pinning some programs (not yet `from_pod`, pinned last) left pins that
/// made every later ADD on the node fail with code 100 (`BPF_OBJ_PIN` of
/// `host_connect4`: exists). A stray pin stands in for the dead loader's.
#[test]
fn pins_of_an_unfinished_load_are_replaced_by_the_next_load() {
    // The build's program directory, as a loaded node names it.
    let loaded = Node::new();
    let mut pod = Sandbox::new(&loaded);
    pod.add_ok(&conf(&loaded, false));
    let build = std::fs::read_dir(loaded.bpffs_root().join("programs"))
        .expect("programs directory")
        .flatten()
        .map(|entry| entry.file_name())
        .find(|name| name != "next")
        .expect("a build directory");

    let node = Node::new();
    let programs = node.bpffs_root().join("programs").join(&build);
    std::fs::create_dir_all(&programs).expect("mkdir programs/<build>");
    let stray = programs.join("host_connect4");
    let output = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&stray)
        .args([
            "type", "array", "key", "4", "value", "4", "entries", "1", "name", "stray",
        ])
        .output()
        .expect("bpftool");
    assert!(
        output.status.success(),
        "bpftool map create: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let conf = conf(&node, false);
    let mut next = Sandbox::new(&node);
    next.add_ok(&conf);
    next.check()
        .expect_success("CHECK after the unfinished load");
    next.del().expect_success("DEL");
}

/// Regression for the other find of the kill loop: an ADD killed after it
/// created the host veth's counters but before it wrote the state record
/// left the `ENDPOINT_STATS` entry behind after DEL, which without a record
/// did not know the ifindex keying it (GC and the agent's reconcile remove
/// such orphans; DEL alone did not). DEL now reads it from the live veth.
#[test]
fn del_without_a_record_removes_the_counters_of_the_veth() {
    let node = Node::new();
    let conf = conf(&node, false);
    let mut pod = Sandbox::new(&node);
    pod.add_ok(&conf);
    let empty = {
        let mut other = Sandbox::new(&node);
        other.add_ok(&conf);
        other.del().expect_success("DEL");
        drop(other);
        Leftovers::of(&node)
    };
    assert_eq!(empty.endpoint_stats, 1, "the pod's counters");
    let record =
        node.state_dir()
            .join(DEFAULT_NETWORK)
            .join(format!("{}-{}.json", pod.id(), pod.name()));
    std::fs::remove_file(&record).unwrap_or_else(|e| panic!("removing {}: {e}", record.display()));

    pod.call("DEL", &conf)
        .expect_success("DEL without a record");
    let left = Leftovers::of(&node);
    assert_eq!(left.endpoint_stats, 0, "counters left: {left:?}");
    assert!(left.footprint.host_veths.is_empty(), "{left:?}");
    assert!(left.footprint.reservations.is_empty(), "{left:?}");
    assert!(left.footprint.endpoints.is_empty(), "{left:?}");
}

fn host_ifname(sandbox: &Sandbox<'_>) -> String {
    sandbox.result()["interfaces"][0]["name"]
        .as_str()
        .expect("host interface")
        .to_string()
}

/// `cni-ebpfd load --replace` (what an upgrading agent does) killed at
/// every point of a replacement, then run again as a restarted agent
/// would: afterwards every attachment runs this generation's programs,
/// once (no clsact filter of the old generation left beside the new one),
/// nothing is left staged, and pods still reach each other.
#[test]
fn sigkill_at_every_point_of_an_upgrade_then_a_new_upgrade_repairs_all() {
    let node = Node::new();
    let clsact = conf(&node, false);
    let tcx = conf(&node, true);
    let mut a = Sandbox::new(&node);
    a.add_ok(&clsact);
    let mut b = Sandbox::new(&node);
    b.add_ok(&tcx);
    let a_veth = host_ifname(&a);
    let agent_binary = cni_ebpf_tests::binaries::path(cni_ebpf_tests::binaries::AGENT);
    let replace = || {
        let mut command = node.netns().command(&agent_binary);
        command
            .arg("--bpffs-root")
            .arg(node.bpffs_root())
            .args(["load", "--replace"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.spawn().expect("spawning cni-ebpfd load --replace")
    };
    let started = Instant::now();
    let mut whole = replace();
    whole.wait().expect("load --replace");
    let call = started.elapsed();

    let points = delays(call);
    let step = (points.len() / 16).max(1);
    let (mut killed, mut tried) = (0, 0);
    for delay in points.iter().step_by(step) {
        if started.elapsed() > LOOP_BUDGET {
            break;
        }
        tried += 1;
        if !kill_after(replace(), *delay) {
            killed += 1;
        }
        node.agent("load", &["--replace"]);
        let status: Value = serde_json::from_str(&node.agent("status", &["--json"])).unwrap();
        let total = status["attachments"].as_array().map_or(0, Vec::len) as u64;
        assert_eq!(
            status["attachmentsOnThisBuild"].as_u64(),
            Some(total),
            "after a kill at {delay:?}: {status}"
        );
        let filters = tc_filter_ids(&node, &a_veth);
        assert_eq!(
            filters.len(),
            1,
            "after a kill at {delay:?}: filters on {a_veth}: {filters:?}"
        );
        assert!(
            !node.bpffs_root().join("programs").join("next").exists(),
            "after a kill at {delay:?}: programs/next left"
        );
        assert!(
            cni_ebpf_tests::traffic::ping(a.netns(), std::net::IpAddr::V4(b.ip()), 1),
            "after a kill at {delay:?}: a cannot reach b"
        );
    }
    a.check().expect_success("CHECK of a");
    b.check().expect_success("CHECK of b");
    eprintln!(
        "[faults] load --replace: uninterrupted {call:?}, {tried} kill points: {killed} killed \
         mid-upgrade; each repaired by the next replacement"
    );
    assert!(killed > 0, "no kill landed inside an upgrade");
}

/// The pod's namespace deleted at every point of an ADD (the runtime tore
/// the sandbox down while the plugin worked), then DEL without it: whether
/// the ADD failed or finished into a namespace that is gone, nothing stays.
#[test]
fn pod_netns_deleted_at_every_point_of_add_then_del_leaves_nothing() {
    let node = Node::new();
    let conf = conf(&node, false);
    let mut kept = Sandbox::new(&node);
    kept.add_ok(&conf);
    let baseline = Leftovers::of(&node);
    let call = call_time(&node, &conf, "ADD");
    let stdin = conf.to_string();
    let started = Instant::now();
    let (mut succeeded, mut failed) = (0, 0);
    for (i, delay) in delays(call).into_iter().enumerate() {
        if started.elapsed() > LOOP_BUDGET {
            break;
        }
        let container_id = format!("netns-gone-{}-{i}", std::process::id());
        let netns = cni_ebpf_tests::Netns::with_loopback("pod");
        let mut child = spawn_raw(&node, "ADD", &container_id, "eth0", netns.path(), &conf);
        thread::sleep(delay);
        drop(netns);
        let status = child.wait().expect("wait for ADD");
        if status.success() {
            succeeded += 1;
        } else {
            failed += 1;
        }
        node.cni(&CniRequest {
            command: "DEL",
            container_id: &container_id,
            netns: None,
            ifname: "eth0",
            args: None,
            stdin: stdin.as_bytes(),
        })
        .expect_success("DEL after the namespace went");
        assert_eq!(
            Leftovers::of(&node),
            baseline,
            "netns deleted {delay:?} into ADD: left behind"
        );
    }
    kept.check()
        .expect_success("CHECK of the pod kept throughout");
    eprintln!(
        "[faults] pod netns deleted during ADD: {succeeded} ADDs finished, {failed} failed; \
         nothing left after DEL"
    );
}

/// The agent killed at points of its start-up reconcile (stale endpoints
/// and link pins of vanished interfaces to remove, a detached program to
/// reattach), then started again: the node ends repaired, whatever the
/// killed one had done.
#[test]
fn sigkill_of_the_agent_mid_reconcile_then_a_restart_repairs_all() {
    let node = Node::new();
    let clsact = conf(&node, false);
    let tcx = conf(&node, true);
    let mut kept = Sandbox::new(&node);
    kept.add_ok(&clsact);
    let kept_veth = host_ifname(&kept);
    let agent_binary = cni_ebpf_tests::binaries::path(cni_ebpf_tests::binaries::AGENT);
    let started = Instant::now();
    let mut killed = 0;
    // The reconcile takes a few ms after start-up: 1 ms apart there.
    let points_ms: Vec<u64> = (0..=24).chain([40, 80, 160, 320]).collect();
    for &delay_ms in &points_ms {
        if started.elapsed() > LOOP_BUDGET {
            break;
        }
        // Work for the reconcile: two interfaces vanish behind the
        // plugin's back, and the kept pod's program is detached.
        let mut gone: Vec<Sandbox<'_>> = (0..2).map(|_| Sandbox::new(&node)).collect();
        for pod in &mut gone {
            pod.add_ok(&tcx);
            node.netns().ip(&["link", "del", &host_ifname(pod)]);
        }
        node.netns()
            .exec_ok("tc", &["filter", "del", "dev", &kept_veth, "ingress"]);

        let mut command = node.netns().command(&agent_binary);
        command
            .arg("--bpffs-root")
            .arg(node.bpffs_root())
            .args(["run", "--metrics-address", "off", "--gc-interval", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let agent = command.spawn().expect("spawning cni-ebpfd run");
        kill_after(agent, Duration::from_millis(delay_ms));
        let repaired = || {
            node.endpoint_ips() == BTreeSet::from([kept.ip().to_string()])
                && cni_ebpf_tests::spec::link_pins(&node).is_empty()
                && tc_filter_ids(&node, &kept_veth).len() == 1
        };
        // The killed agent had not finished the repair.
        if !repaired() {
            killed += 1;
        }

        let agent = cni_ebpf_tests::agent::Agent::start(&node, &["--gc-interval", "1"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !repaired() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        assert!(
            repaired(),
            "agent killed after {delay_ms} ms, restarted: endpoints {:?}, pins {:?}, \
             filters on {kept_veth}: {:?}",
            node.endpoint_ips(),
            cni_ebpf_tests::spec::link_pins(&node),
            tc_filter_ids(&node, &kept_veth)
        );
        drop(agent);
        // The runtime's DELs of the vanished pods still succeed.
        for mut pod in gone {
            pod.del().expect_success("DEL of a vanished pod");
        }
        kept.check().expect_success("CHECK of the kept pod");
    }
    eprintln!(
        "[faults] agent killed 0-320 ms after its start ({} points, {killed} before its \
         reconcile had repaired everything); each restart repaired the node",
        points_ms.len()
    );
    assert!(killed > 0, "no kill landed before the agent finished");
}
