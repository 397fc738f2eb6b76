//! The datapath loaded once for the whole test binary: the embedded
//! object, its tc programs run on crafted frames with `BPF_PROG_TEST_RUN`
//! (aya's `TestRun`), and typed access to its maps.
//!
//! The object's maps are marked "pinned by name", and aya 0.14 cannot load
//! such a map unpinned, so the object is loaded on a thread of its own that
//! enters a private mount namespace (`unshare(CLONE_NEWNS)` acts on the
//! calling thread only) and mounts a fresh bpffs there; the bpffs is gone
//! when the load returns, and the maps live on through the loader's file
//! descriptors only. Nothing is pinned in, or visible from, the machine's
//! own `/sys/fs/bpf`.
//!
//! Verifying `from_pod` takes seconds on this machine kind, so the programs
//! are loaded once and the tests take turns: each starts by emptying every
//! map (`Datapath::reset`), so no test sees another's state.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        Mutex, OnceLock, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    thread,
};

use aya::{
    Ebpf, EbpfLoader, Pod, TestRun as _, TestRunOptions,
    maps::{
        Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, lpm_trie::Key,
    },
    programs::{SchedClassifier, Xdp},
    util::nr_cpus,
};
use cni_ebpf_common::{
    COUNTER_SLOTS, DIRECTIONS, DROP_SLOTS, Direction, DropReason, ENDPOINT_V4_SLOTS, Endpoint,
    EndpointStats, EndpointV4, FlowKey, HostPortFlow, HostPortKey, HostPortSockKey, HostPortTarget,
    IpKey, NatEntry, NodeConfig, NodeConfigV6, PacketCount, Peer, RateLimit, TunnelConfig, Verdict,
    endpoint_v4_index, map_names, program_names,
};
use cni_ebpf_userspace::datapath;
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, unshare},
};

/// tc verdicts (`include/uapi/linux/pkt_cls.h`).
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

/// XDP verdicts (`include/uapi/linux/bpf.h`).
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

/// The programs under test.
const PROGRAMS: [&str; 4] = [
    program_names::FROM_POD,
    program_names::FROM_UPLINK,
    program_names::TO_POD,
    program_names::TO_UPLINK,
];

/// The maps that are large in the object (hundreds of thousands of
/// preallocated LRU entries) get this many entries here: the load stays
/// quick and a test never fills them.
const SMALL_MAP_ENTRIES: u32 = 1024;

/// Slots of `ENDPOINT_COUNTERS` the tests may name: zeroed before each.
pub const TEST_STATS_SLOTS: u32 = 16;
const LARGE_MAPS: [&str; 9] = [
    map_names::ENDPOINTS,
    map_names::NAT_OUT,
    map_names::NAT_IN,
    map_names::HOST_PORTS,
    map_names::HOST_PORT_CT,
    map_names::HOST_PORT_SOCK,
    map_names::HOST_PORT_USE,
    map_names::RATE_LIMITS,
    map_names::NETFILTER_FLOWS,
];

/// Runs `test` against the datapath with every map empty; a failed
/// assertion in it fails the calling test.
pub fn with_datapath(test: impl FnOnce(&mut Datapath)) {
    static SHARED: OnceLock<Mutex<Datapath>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| Mutex::new(Datapath::load()));
    // A test that failed while holding it left state the reset removes.
    let mut datapath = shared.lock().unwrap_or_else(PoisonError::into_inner);
    datapath.reset();
    test(&mut datapath);
}

/// A bpffs mounted in the calling thread's own mount namespace; unmounted
/// and its directory removed on drop.
struct PrivateBpffs {
    path: PathBuf,
}

impl PrivateBpffs {
    fn mount() -> Self {
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
        // Nothing mounted from here on propagates back to the machine.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("making the private mount namespace's mounts private");
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "cni-ebpf-dptest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        mount(
            Some("bpf"),
            &path,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mount -t bpf bpf {}: {e}", path.display()));
        Self { path }
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.path);
    }
}

/// What the test gives the kernel as the packet's `__sk_buff`: the fields
/// `bpf_prog_test_run_skb` takes from `ctx_in` (it refuses the others
/// unless they are zero). The device is looked up by `ifindex` in the
/// calling thread's network namespace; 1 (`lo`) always exists, and is the
/// device the kernel uses when `ifindex` is 0 or 1.
#[derive(Clone, Copy, Debug)]
pub struct Skb {
    pub ifindex: u32,
    pub mark: u32,
    /// Segments of a GSO packet (0: not GSO).
    pub gso_segs: u32,
}

impl Default for Skb {
    fn default() -> Self {
        Self {
            ifindex: LO_IFINDEX,
            mark: 0,
            gso_segs: 0,
        }
    }
}

pub const LO_IFINDEX: u32 = 1;

/// The uapi `struct __sk_buff` (192 bytes on 6.18) with the fields set
/// here named and the others as zeros: `mark` at 8, `ifindex` at 40,
/// `gso_segs` at 164.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SkBuffCtx {
    len: u32,
    pkt_type: u32,
    mark: u32,
    queue_mapping_to_priority: [u32; 6],
    ingress_ifindex: u32,
    ifindex: u32,
    tc_index_to_tstamp: [u32; 29],
    wire_len: u32,
    gso_segs: u32,
    sk_to_hwtstamp: [u32; 6],
}

const _: () = assert!(size_of::<SkBuffCtx>() == 192);
const _: () = assert!(std::mem::offset_of!(SkBuffCtx, mark) == 8);
const _: () = assert!(std::mem::offset_of!(SkBuffCtx, ifindex) == 40);
const _: () = assert!(std::mem::offset_of!(SkBuffCtx, gso_segs) == 164);

impl SkBuffCtx {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: plain `u32`s without padding.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(self).cast(), size_of::<Self>()) }
    }

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; every bit pattern is a valid `u32`.
        unsafe {
            std::slice::from_raw_parts_mut(std::ptr::from_mut(self).cast(), size_of::<Self>())
        }
    }
}

/// What a program did with a frame.
#[derive(Debug)]
pub struct Outcome {
    /// The program's return value: `TC_ACT_*`.
    pub action: i32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// `skb->mark` after the run.
    pub mark: u32,
}

/// The loaded object and typed access to its maps.
pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads the object and its tc programs on a thread inside a private
    /// mount namespace with a bpffs of its own (see the module comment).
    fn load() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the datapath unit tests need root (CAP_BPF, CAP_SYS_ADMIN): run them with `cargo xtask test`"
        );
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    let bpffs = PrivateBpffs::mount();
                    Self::load_pinned_under(&bpffs.path)
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn load_pinned_under(bpffs: &Path) -> Self {
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(bpffs);
        for name in LARGE_MAPS {
            loader.map_max_entries(name, SMALL_MAP_ENTRIES);
        }
        let mut ebpf = loader.load(datapath::object()).expect(
            "loading the embedded eBPF object (is the workspace built with the eBPF toolchain?)",
        );
        for name in PROGRAMS {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("no program {name}"))
                .try_into()
                .unwrap_or_else(|e| panic!("{name} is not a tc program: {e}"));
            program
                .load()
                .unwrap_or_else(|e| panic!("loading {name}: {e:?}"));
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(program_names::XDP_UPLINK)
            .expect("no XDP program")
            .try_into()
            .expect("xdp_uplink is not an XDP program");
        xdp.load().expect("loading xdp_uplink");
        Self { ebpf }
    }

    /// Empties every map: what a test finds is what it puts there.
    fn reset(&mut self) {
        let names: Vec<String> = self.ebpf.maps().map(|(name, _)| name.to_string()).collect();
        for name in names {
            match name.as_str() {
                map_names::ENDPOINTS => self.clear::<IpKey, Endpoint>(&name),
                map_names::NODE_ADDRS => self.clear::<IpKey, u8>(&name),
                map_names::NAT_OUT | map_names::NAT_IN => self.clear::<FlowKey, NatEntry>(&name),
                map_names::HOST_PORTS => self.clear::<HostPortKey, HostPortTarget>(&name),
                map_names::HOST_PORT_CT => self.clear::<FlowKey, HostPortFlow>(&name),
                map_names::HOST_PORT_SOCK => self.clear::<HostPortSockKey, HostPortKey>(&name),
                map_names::HOST_PORT_USE => self.clear::<u32, u32>(&name),
                map_names::RATE_LIMITS => self.clear::<u64, RateLimit>(&name),
                map_names::NETFILTER_FLOWS => self.clear::<FlowKey, u8>(&name),
                map_names::NO_MASQ | map_names::SERVICES => self.clear_trie::<u8>(&name),
                map_names::PEERS => self.clear_trie::<Peer>(&name),
                map_names::TUNNEL => self
                    .array_mut(&name)
                    .set(0, TunnelConfig::default(), 0)
                    .expect(&name),
                map_names::NODE_CONFIG => self.set_node_config(NodeConfig::default()),
                map_names::NODE_CONFIG_V6 => self.set_node_config_v6(NodeConfigV6::default()),
                map_names::NAT_FLOWS => self.set_nat_flows(0),
                map_names::DROPS => self.zero_counters(&name, DROP_SLOTS),
                map_names::COUNTERS => self.zero_counters(&name, COUNTER_SLOTS),
                map_names::ENDPOINT_SLOTS => self.clear::<u32, u32>(&name),
                map_names::ENDPOINTS_V4 => {
                    let mut map = self.array_mut(&name);
                    for index in 0..ENDPOINT_V4_SLOTS {
                        map.set(index, EndpointV4::default(), 0).expect(&name);
                    }
                }
                map_names::ENDPOINT_COUNTERS => {
                    let mut map: PerCpuArray<_, EndpointStats> =
                        PerCpuArray::try_from(self.ebpf.map_mut(&name).expect(&name)).expect(&name);
                    let zeros = vec![EndpointStats::default(); nr_cpus().expect("nr_cpus")];
                    // The tests name slots below this (all of them would be
                    // 4096 writes before every test).
                    for slot in 0..TEST_STATS_SLOTS {
                        let values = PerCpuValues::try_from(zeros.clone()).expect(&name);
                        map.set(slot, values, 0).expect(&name);
                    }
                }
                map_names::ENDPOINT_STATS => {
                    let mut map: PerCpuHashMap<_, u32, EndpointStats> =
                        PerCpuHashMap::try_from(self.ebpf.map_mut(&name).expect("map"))
                            .expect("map");
                    let keys: Vec<u32> = map.keys().map(|key| key.expect("key")).collect();
                    for key in keys {
                        map.remove(&key).expect("remove");
                    }
                }
                // aya-log's ring buffer and record scratch space: written,
                // never read here. Read-only data: the programs' constants.
                datapath::LOG_MAP | "AYA_LOG_BUF" => {}
                constants if constants.starts_with(".rodata") => {}
                other => {
                    panic!("map {other} is not emptied between tests: add it to Datapath::reset")
                }
            }
        }
    }

    fn clear<K: Pod, V: Pod>(&mut self, name: &str) {
        let mut map = self.hash::<K, V>(name);
        let keys: Vec<K> = map.keys().map(|key| key.expect(name)).collect();
        for key in keys {
            map.remove(&key).expect(name);
        }
    }

    fn clear_trie<V: Pod>(&mut self, name: &str) {
        let mut map: LpmTrie<_, [u8; 16], V> =
            LpmTrie::try_from(self.ebpf.map_mut(name).expect(name)).expect(name);
        let keys: Vec<Key<[u8; 16]>> = map.keys().map(|key| key.expect(name)).collect();
        for key in keys {
            map.remove(&key).expect(name);
        }
    }

    fn zero_counters(&mut self, name: &str, slots: u32) {
        let mut map: PerCpuArray<_, PacketCount> =
            PerCpuArray::try_from(self.ebpf.map_mut(name).expect(name)).expect(name);
        let cpus = nr_cpus().expect("nr_cpus");
        for slot in 0..slots {
            let zeros = PerCpuValues::try_from(vec![PacketCount::default(); cpus]).expect(name);
            map.set(slot, zeros, 0).expect(name);
        }
    }

    /// Runs tc program `name` once on `frame`, as if it arrived on the
    /// device and with the mark `skb` says.
    pub fn run(&mut self, name: &'static str, frame: &[u8], skb: Skb) -> Outcome {
        self.try_run(name, frame, skb)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {name}: {e:?}"))
    }

    /// [`Datapath::run`], with the kernel's refusal to run (a frame too
    /// short for its ethertype: `EINVAL`) as an error instead of a panic.
    pub fn try_run(
        &mut self,
        name: &'static str,
        frame: &[u8],
        skb: Skb,
    ) -> Result<Outcome, aya::programs::ProgramError> {
        let ctx_in = SkBuffCtx {
            mark: skb.mark,
            ifindex: skb.ifindex,
            gso_segs: skb.gso_segs,
            ..Default::default()
        };
        let mut ctx_out = SkBuffCtx::default();
        // Programs never grow a packet; the slack shows it if one does.
        let mut data_out = vec![0u8; frame.len() + 256];
        let program: &SchedClassifier = self
            .ebpf
            .program(name)
            .unwrap_or_else(|| panic!("no program {name}"))
            .try_into()
            .unwrap_or_else(|e| panic!("{name} is not a tc program: {e}"));
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            ctx_in: Some(ctx_in.as_bytes()),
            ctx_out: Some(ctx_out.as_bytes_mut()),
            ..Default::default()
        })?;
        data_out.truncate(result.data_size_out as usize);
        Ok(Outcome {
            action: result.return_value as i32,
            frame: data_out,
            mark: ctx_out.mark,
        })
    }

    /// Runs `xdp_uplink` once on `frame`: its `XDP_*` verdict and the frame
    /// as it left it (a redirect is only reported: test runs send nothing).
    pub fn run_xdp(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut data_out = vec![0u8; frame.len() + 256];
        let program: &Xdp = self
            .ebpf
            .program(program_names::XDP_UPLINK)
            .expect("no XDP program")
            .try_into()
            .expect("xdp_uplink is not an XDP program");
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut data_out),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of xdp_uplink: {e:?}"));
        data_out.truncate(result.data_size_out as usize);
        (result.return_value, data_out)
    }

    fn hash<K: Pod, V: Pod>(&mut self, name: &str) -> HashMap<&mut MapData, K, V> {
        HashMap::try_from(self.ebpf.map_mut(name).expect(name)).expect(name)
    }

    fn array<V: Pod>(&self, name: &str) -> Array<&MapData, V> {
        Array::try_from(self.ebpf.map(name).expect(name)).expect(name)
    }

    fn array_mut<V: Pod>(&mut self, name: &str) -> Array<&mut MapData, V> {
        Array::try_from(self.ebpf.map_mut(name).expect(name)).expect(name)
    }

    fn lookup<K: Pod, V: Pod>(&self, name: &str, key: &K) -> Option<V> {
        let map: HashMap<&MapData, K, V> =
            HashMap::try_from(self.ebpf.map(name).expect(name)).expect(name);
        map.get(key, 0).ok()
    }

    /// Every entry of hash map `name`.
    pub fn entries<K: Pod, V: Pod>(&self, name: &str) -> Vec<(K, V)> {
        let map: HashMap<&MapData, K, V> =
            HashMap::try_from(self.ebpf.map(name).expect(name)).expect(name);
        map.iter().map(|entry| entry.expect(name)).collect()
    }

    /// The endpoint at `addr` as the plugin writes it: in `ENDPOINTS`, and
    /// for IPv4 in its live slot of `ENDPOINTS_V4` too.
    pub fn add_endpoint(&mut self, addr: IpKey, endpoint: Endpoint) {
        self.add_endpoint_record_only(addr, endpoint);
        if let Some(v4) = addr.as_v4() {
            self.set_endpoint_slot_v4(EndpointV4 {
                live: 1,
                addr: v4,
                endpoint,
                _reserved: [0; 16],
            });
        }
    }

    /// `addr` in `ENDPOINTS` alone: for IPv4, as a build without
    /// `ENDPOINTS_V4` wrote it, or an address whose slot another holds.
    pub fn add_endpoint_record_only(&mut self, addr: IpKey, endpoint: Endpoint) {
        self.hash(map_names::ENDPOINTS)
            .insert(addr, endpoint, 0)
            .expect("ENDPOINTS insert");
    }

    /// Removes `addr` from `ENDPOINTS` alone.
    pub fn remove_endpoint_record(&mut self, addr: IpKey) {
        self.hash::<IpKey, Endpoint>(map_names::ENDPOINTS)
            .remove(&addr)
            .expect("ENDPOINTS remove");
    }

    /// Writes `slot` at the index of its address in `ENDPOINTS_V4`.
    pub fn set_endpoint_slot_v4(&mut self, slot: EndpointV4) {
        self.array_mut(map_names::ENDPOINTS_V4)
            .set(endpoint_v4_index(slot.addr), slot, 0)
            .expect("ENDPOINTS_V4 set");
    }

    /// The slot of `ENDPOINTS_V4` where IPv4 address `addr` would be.
    pub fn endpoint_slot_v4(&self, addr: [u8; 4]) -> EndpointV4 {
        self.array(map_names::ENDPOINTS_V4)
            .get(&endpoint_v4_index(addr), 0)
            .expect("ENDPOINTS_V4 get")
    }

    /// The record of the endpoint at `addr` (`ENDPOINTS`).
    pub fn endpoint(&self, addr: IpKey) -> Endpoint {
        self.lookup(map_names::ENDPOINTS, &addr)
            .expect("the endpoint is in ENDPOINTS")
    }

    /// Makes the per-endpoint counters of host veth `ifindex` (the plugin
    /// does this at ADD).
    pub fn add_endpoint_stats(&mut self, ifindex: u32) {
        let mut map: PerCpuHashMap<_, u32, EndpointStats> = PerCpuHashMap::try_from(
            self.ebpf
                .map_mut(map_names::ENDPOINT_STATS)
                .expect("ENDPOINT_STATS"),
        )
        .expect("ENDPOINT_STATS");
        let zeros = vec![EndpointStats::default(); nr_cpus().expect("nr_cpus")];
        map.insert(ifindex, PerCpuValues::try_from(zeros).expect("values"), 0)
            .expect("ENDPOINT_STATS insert");
    }

    /// Packets counted at slot `slot` of `ENDPOINT_COUNTERS` (below
    /// [`TEST_STATS_SLOTS`]), summed over CPUs: (from the pod, to the pod).
    pub fn slot_packets(&self, slot: u32) -> (u64, u64) {
        assert!(
            slot < TEST_STATS_SLOTS,
            "slot {slot} is not reset between tests"
        );
        let map: PerCpuArray<_, EndpointStats> = PerCpuArray::try_from(
            self.ebpf
                .map(map_names::ENDPOINT_COUNTERS)
                .expect("ENDPOINT_COUNTERS"),
        )
        .expect("ENDPOINT_COUNTERS");
        let values = map.get(&slot, 0).expect("ENDPOINT_COUNTERS slot");
        values.iter().fold((0, 0), |(from, to), stats| {
            (from + stats.from_pod.packets, to + stats.to_pod.packets)
        })
    }

    /// Packets counted for the endpoint behind `ifindex`, summed over CPUs:
    /// (from the pod, to the pod).
    pub fn endpoint_packets(&self, ifindex: u32) -> (u64, u64) {
        let map: PerCpuHashMap<_, u32, EndpointStats> = PerCpuHashMap::try_from(
            self.ebpf
                .map(map_names::ENDPOINT_STATS)
                .expect("ENDPOINT_STATS"),
        )
        .expect("ENDPOINT_STATS");
        let values = map.get(&ifindex, 0).expect("ENDPOINT_STATS entry");
        values.iter().fold((0, 0), |(from, to), stats| {
            (from + stats.from_pod.packets, to + stats.to_pod.packets)
        })
    }

    pub fn set_node_config_v6(&mut self, config: NodeConfigV6) {
        self.array_mut(map_names::NODE_CONFIG_V6)
            .set(0, config, 0)
            .expect("NODE_CONFIG_V6 set");
    }

    pub fn set_node_config(&mut self, config: NodeConfig) {
        self.array_mut(map_names::NODE_CONFIG)
            .set(0, config, 0)
            .expect("NODE_CONFIG set");
    }

    pub fn add_node_addr(&mut self, addr: IpKey) {
        self.hash(map_names::NODE_ADDRS)
            .insert(addr, 1u8, 0)
            .expect("NODE_ADDRS insert");
    }

    fn add_cidr(&mut self, name: &str, addr: IpKey, prefix_len: u32) {
        let mut map: LpmTrie<_, [u8; 16], u8> =
            LpmTrie::try_from(self.ebpf.map_mut(name).expect(name)).expect(name);
        map.insert(&Key::new(prefix_len, addr.addr), 1, 0)
            .expect("LPM insert");
    }

    /// An IPv4 CIDR excluded from masquerade (`prefix_len` of the IPv4
    /// address; keys are IPv4-mapped IPv6).
    /// An IPv6 CIDR: `prefix_len` counts the whole 128 bits.
    pub fn add_no_masq_v6(&mut self, addr: IpKey, prefix_len: u32) {
        self.add_cidr(map_names::NO_MASQ, addr, prefix_len);
    }

    pub fn add_no_masq(&mut self, addr: IpKey, prefix_len: u32) {
        self.add_cidr(map_names::NO_MASQ, addr, 96 + prefix_len);
    }

    pub fn add_service_cidr(&mut self, addr: IpKey, prefix_len: u32) {
        self.add_cidr(map_names::SERVICES, addr, 96 + prefix_len);
    }

    pub fn add_service_cidr_v6(&mut self, addr: IpKey, prefix_len: u32) {
        self.add_cidr(map_names::SERVICES, addr, prefix_len);
    }

    pub fn nat_out(&self, key: &FlowKey) -> Option<NatEntry> {
        self.lookup(map_names::NAT_OUT, key)
    }

    pub fn nat_in(&self, key: &FlowKey) -> Option<NatEntry> {
        self.lookup(map_names::NAT_IN, key)
    }

    pub fn nat_in_entries(&self) -> Vec<(FlowKey, NatEntry)> {
        self.entries(map_names::NAT_IN)
    }

    pub fn insert_nat_in(&mut self, key: FlowKey, entry: NatEntry) {
        self.hash(map_names::NAT_IN)
            .insert(key, entry, 0)
            .expect("NAT_IN insert");
    }

    /// Live translated flows as the datapath counts them for admission.
    pub fn nat_flows(&self) -> u64 {
        self.array(map_names::NAT_FLOWS)
            .get(&0, 0)
            .expect("NAT_FLOWS slot")
    }

    pub fn set_nat_flows(&mut self, flows: u64) {
        self.array_mut(map_names::NAT_FLOWS)
            .set(0, flows, 0)
            .expect("NAT_FLOWS set");
    }

    pub fn add_host_port(&mut self, key: HostPortKey, target: HostPortTarget) {
        self.hash(map_names::HOST_PORTS)
            .insert(key, target, 0)
            .expect("HOST_PORTS insert");
    }

    pub fn host_port_flow(&self, key: &FlowKey) -> Option<HostPortFlow> {
        self.lookup(map_names::HOST_PORT_CT, key)
    }

    pub fn insert_host_port_flow(&mut self, key: FlowKey, flow: HostPortFlow) {
        self.hash(map_names::HOST_PORT_CT)
            .insert(key, flow, 0)
            .expect("HOST_PORT_CT insert");
    }

    pub fn set_rate_limit(&mut self, owner: u64, limit: RateLimit) {
        self.hash(map_names::RATE_LIMITS)
            .insert(owner, limit, 0)
            .expect("RATE_LIMITS insert");
    }

    pub fn rate_limit(&self, owner: u64) -> RateLimit {
        self.lookup(map_names::RATE_LIMITS, &owner)
            .expect("RATE_LIMITS entry")
    }

    pub fn netfilter_flows(&self) -> Vec<FlowKey> {
        self.entries::<FlowKey, u8>(map_names::NETFILTER_FLOWS)
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    pub fn insert_netfilter_flow(&mut self, key: FlowKey) {
        self.hash(map_names::NETFILTER_FLOWS)
            .insert(key, 0u8, 0)
            .expect("NETFILTER_FLOWS insert");
    }

    fn per_cpu_packets(&self, name: &str, slot: u32) -> u64 {
        let map: PerCpuArray<_, PacketCount> =
            PerCpuArray::try_from(self.ebpf.map(name).expect(name)).expect(name);
        let values = map.get(&slot, 0).expect(name);
        values.iter().map(|count| count.packets).sum()
    }

    /// Every counter that moved, as `(name, packets)`: verdicts by name
    /// (`local-delivery`), drops as `drop <reason> <direction>`, in the
    /// order of `Verdict::ALL` then `DropReason::ALL`. Tests compare the
    /// whole list, so a counter that moved unexpectedly fails them too.
    pub fn counts(&self) -> Vec<(String, u64)> {
        let mut counts = Vec::new();
        for verdict in Verdict::ALL {
            assert!((verdict as u32) < COUNTER_SLOTS);
            let packets = self.per_cpu_packets(map_names::COUNTERS, verdict as u32);
            if packets != 0 {
                counts.push((verdict.name().to_string(), packets));
            }
        }
        for reason in DropReason::ALL {
            for direction in [Direction::FromPod, Direction::ToPod] {
                let packets = self.per_cpu_packets(map_names::DROPS, reason.index(direction));
                if packets != 0 {
                    let way = match direction {
                        Direction::FromPod => "from-pod",
                        Direction::ToPod => "to-pod",
                    };
                    counts.push((format!("drop {} {way}", reason.name()), packets));
                }
            }
        }
        assert_eq!(DIRECTIONS, 2);
        counts
    }
}

/// `counts()` as the tests write them.
pub fn counted(expected: &[(&str, u64)]) -> Vec<(String, u64)> {
    expected
        .iter()
        .map(|(name, packets)| ((*name).to_string(), *packets))
        .collect()
}

/// `bpf_ktime_get_ns()` as userspace reads it.
pub fn ktime_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}
