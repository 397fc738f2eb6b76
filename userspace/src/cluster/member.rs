//! The cluster agent: one node's membership across connections to etcd
//! (join, keep the lease, follow the others, reconnect).

use std::{
    collections::BTreeMap,
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use etcd_client::{Client, ConnectOptions, TlsOptions};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::watch as signal;

use super::{
    ClusterError, ClusterNetwork, Result, SubnetRecord, Vtep,
    keys::Keys,
    lease::{self, Claim},
    node_state::{self, NodeState},
    program::PeerTable,
    records::{Backend, Ipv6Pool, Pool},
    tls::EtcdTls,
    underlay::Underlay,
    watch::{self, Change, Step, SubnetWatch},
};
use crate::{
    BpffsLayout,
    peers::{self, Peers, TUNNEL_OVERHEAD},
};

/// How long one etcd request may take before the connection counts as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection backoff: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(2));
/// How often peers whose programming failed are tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// How often every peer is programmed again (repairs what was removed
/// behind the agent's back).
const REAPPLY_INTERVAL: Duration = Duration::from_secs(30);
/// The widest split of a cluster CIDR into node CIDRs (2^16 nodes).
const MAX_NODE_BITS: u8 = 16;
/// The longest node CIDR prefix of each family (room for a gateway, the
/// network and broadcast addresses, and pods).
const MAX_NODE_PREFIX: (u8, u8) = (30, 126);

/// Everything `cni-ebpfd run` was told about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub endpoints: Vec<String>,
    /// The CA, client certificate and key of `https://` endpoints.
    pub tls: EtcdTls,
    /// Key prefix of this cluster, e.g. `/cni-ebpf/<cluster-name>`.
    pub prefix: String,
    /// The network to create if the cluster has none yet.
    pub cluster_cidr: Option<Ipv4Net>,
    pub node_cidr_prefix: u8,
    /// The IPv6 pool of a dual-stack cluster to create.
    pub cluster_cidr_v6: Option<Ipv6Net>,
    pub node_cidr_prefix_v6: u8,
    /// Pod CIDRs given to this node instead of leased ones.
    pub pod_cidr: Option<Ipv4Net>,
    pub pod_cidr_v6: Option<Ipv6Net>,
    pub node_name: String,
    pub underlay_address: Option<Ipv4Addr>,
    pub underlay_address_v6: Option<Ipv6Addr>,
    pub backend: Backend,
    pub vtep: Vtep,
    pub lease_ttl: Duration,
    /// Where `cluster/node.json` goes (the plugin's `stateDir`).
    pub state_dir: PathBuf,
}

impl ClusterSettings {
    /// The network this node would create.
    fn wanted_network(&self) -> Result<Option<ClusterNetwork>> {
        let Some(cluster_cidr) = self.cluster_cidr else {
            return Ok(None);
        };
        check_split(
            "--node-cidr-prefix",
            IpNet::V4(cluster_cidr),
            self.node_cidr_prefix,
            MAX_NODE_PREFIX.0,
        )?;
        if let Some(v6) = self.cluster_cidr_v6 {
            check_split(
                "--node-cidr-prefix-v6",
                IpNet::V6(v6),
                self.node_cidr_prefix_v6,
                MAX_NODE_PREFIX.1,
            )?;
        }
        Ok(Some(ClusterNetwork {
            cluster_cidr: cluster_cidr.trunc(),
            node_cidr_prefix: self.node_cidr_prefix,
            backend: self.backend,
            vxlan: self.vtep,
            ipv6: self.cluster_cidr_v6.map(|v6| Ipv6Pool {
                cluster_cidr: v6.trunc(),
                node_cidr_prefix: self.node_cidr_prefix_v6,
            }),
        }))
    }

    /// The CIDR given for the pool's family.
    fn given(&self, pool: &Pool) -> Option<IpNet> {
        match pool.cluster_cidr {
            IpNet::V4(_) => self.pod_cidr.map(IpNet::V4),
            IpNet::V6(_) => self.pod_cidr_v6.map(IpNet::V6),
        }
    }
}

/// A node CIDR prefix splits its cluster CIDR into 2 to 2^16 node CIDRs.
fn check_split(flag: &str, cluster_cidr: IpNet, prefix: u8, max: u8) -> Result<()> {
    let bits = prefix.checked_sub(cluster_cidr.prefix_len());
    if !(1..=MAX_NODE_BITS).contains(&bits.unwrap_or(0)) || prefix > max {
        return Err(ClusterError::Config(format!(
            "{flag} {prefix} must be longer than the cluster CIDR {cluster_cidr} by 1 to {MAX_NODE_BITS} bits, and at most {max}"
        )));
    }
    Ok(())
}

/// The node's pod CIDRs (IPv4 first), held under one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    cidrs: Vec<IpNet>,
    lease: i64,
}

impl Held {
    fn of_family(&self, v6: bool) -> Option<IpNet> {
        self.cidrs
            .iter()
            .find(|c| c.addr().is_ipv6() == v6)
            .copied()
    }
}

/// The cluster agent running on its own thread.
pub struct Handle {
    stop: signal::Sender<bool>,
    ended: signal::Receiver<bool>,
    thread: thread::JoinHandle<Result<()>>,
}

impl Handle {
    /// Whether it still runs (it ends only on a configuration error).
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Completes when the cluster agent ends by itself; never when `handle`
    /// is `None` (not in cluster mode).
    pub async fn ended(handle: Option<&Handle>) {
        match handle {
            Some(handle) => {
                let mut ended = handle.ended.clone();
                let _ = ended.wait_for(|ended| *ended).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Stops it (the lease is left to expire, so a restart keeps the CIDR
    /// and the peers keep their routes meanwhile) and returns how it ended.
    pub fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Starts the cluster agent on a thread of the calling thread's network
/// namespace (threads inherit it).
pub fn spawn(settings: ClusterSettings, layout: BpffsLayout) -> Result<Handle> {
    settings.tls.check(&settings.endpoints)?;
    let wanted = settings.wanted_network()?;
    let underlay = Underlay::detect(settings.underlay_address, settings.underlay_address_v6)?;
    let (stop, stopped) = signal::channel(false);
    let (done, ended) = signal::channel(false);
    let thread = thread::Builder::new()
        .name("cluster".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ClusterError::io("starting a tokio runtime", "", e))
                .and_then(|runtime| {
                    runtime.block_on(run(settings, wanted, underlay, layout, stopped))
                });
            let _ = done.send(true);
            result
        })
        .map_err(|e| ClusterError::io("spawning the cluster thread", "", e))?;
    Ok(Handle {
        stop,
        ended,
        thread,
    })
}

async fn run(
    settings: ClusterSettings,
    wanted: Option<ClusterNetwork>,
    underlay: Underlay,
    layout: BpffsLayout,
    mut stopped: signal::Receiver<bool>,
) -> Result<()> {
    log::info!(
        "cluster: node {} joins {} at {}{} (underlay {}{} on {}, MTU {})",
        settings.node_name,
        settings.prefix,
        settings.endpoints.join(","),
        if settings.tls.ca_file.is_some() {
            " over TLS"
        } else {
            ""
        },
        underlay.address,
        underlay
            .address_v6
            .map(|a| format!(" and {a}"))
            .unwrap_or_default(),
        underlay.ifname,
        underlay.mtu
    );
    let datapath = Peers::connect(&layout).map_err(|e| ClusterError::Datapath(e.to_string()))?;
    let previous = node_state::read(&settings.state_dir)
        .map(|s| {
            std::iter::once(IpNet::V4(s.pod_cidr))
                .chain(s.pod_cidr_v6.map(IpNet::V6))
                .collect()
        })
        .unwrap_or_default();
    let mut member = Member {
        keys: Keys::new(&settings.prefix),
        table: PeerTable::new(&layout, datapath, settings.backend, underlay.clone()),
        previous,
        held: None,
        revision: None,
        written: None,
        tunnel_ready: false,
        settings,
        wanted,
        underlay,
    };
    let mut backoff = BACKOFF.0;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            outcome = member.session() => outcome,
            _ = stopped.wait_for(|stop| *stop) => return Ok(()),
        };
        let Err(e) = outcome;
        if !e.is_transient() {
            log::error!("cluster: giving up: {e}");
            return Err(e);
        }
        if started.elapsed() > BACKOFF.1 * 2 {
            backoff = BACKOFF.0;
        }
        log::warn!(
            "cluster: etcd connection lost ({}){}; the datapath keeps its peers; reconnecting in {} ms",
            e.detailed(),
            member.hint(&e),
            backoff.as_millis()
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped.wait_for(|stop| *stop) => return Ok(()),
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// This node's membership, kept across connections.
struct Member {
    settings: ClusterSettings,
    wanted: Option<ClusterNetwork>,
    keys: Keys,
    underlay: Underlay,
    table: PeerTable,
    /// The CIDRs of an earlier run or connection, preferred when claiming.
    previous: Vec<IpNet>,
    held: Option<Held>,
    /// The last revision whose changes are programmed.
    revision: Option<i64>,
    written: Option<NodeState>,
    tunnel_ready: bool,
}

enum Never {}

impl Member {
    /// One connection: join, then follow the cluster until the connection
    /// fails (the only way out).
    async fn session(&mut self) -> Result<Never> {
        // Read at every connection: rotated certificates take effect here.
        let tls = self
            .settings
            .tls
            .options()
            .map_err(|e| ClusterError::TlsFiles(e.to_string()))?;
        let mut client = connect(&self.settings.endpoints, tls).await?;
        let network = lease::ensure_network(&mut client, &self.keys, self.wanted.as_ref()).await?;
        self.table.set_backend(network.backend);
        self.hold(&mut client, &network).await?;
        self.tunnel_ready = false;
        if network.backend.tunnels() {
            self.ensure_tunnel(&network).await;
        }
        let mut watch = self.catch_up(&mut client).await?;
        let lease = self.held.as_ref().expect("held above").lease;
        let (mut keeper, mut answers) = rpc(client.lease_keep_alive(lease)).await?;
        let mut renew = tokio::time::interval(self.settings.lease_ttl / 3);
        let mut retry = tokio::time::interval(RETRY_INTERVAL);
        let mut reapply = tokio::time::interval_at(
            tokio::time::Instant::now() + REAPPLY_INTERVAL,
            REAPPLY_INTERVAL,
        );
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    rpc(keeper.keep_alive()).await?;
                    let answer = rpc(answers.message()).await?;
                    if answer.is_none_or(|a| a.ttl() <= 0) {
                        log::warn!("cluster: lease {lease:x} expired; claiming again");
                        self.held = None;
                        return Err(ClusterError::Protocol("the lease expired".into()));
                    }
                }
                _ = retry.tick() => {
                    if network.backend.tunnels() && !self.tunnel_ready {
                        self.ensure_tunnel(&network).await;
                    }
                    self.table.retry().await;
                }
                _ = reapply.tick() => self.table.reapply().await,
                step = watch.next(&self.keys) => match step? {
                    Step::Changes { changes, revision } => {
                        if self.apply(changes).await {
                            self.held = None;
                            return Err(ClusterError::Protocol("this node's subnet key was deleted".into()));
                        }
                        self.revision = Some(revision);
                    }
                    Step::Compacted { compact_revision } => {
                        log::info!(
                            "cluster: revision {} was compacted (now {compact_revision}); listing again",
                            self.revision.map_or(0, |r| r + 1)
                        );
                        self.revision = None;
                        watch = self.catch_up(&mut client).await?;
                    }
                },
            }
        }
    }

    /// Keeps the lease of an earlier connection if etcd still has it, else
    /// claims a CIDR under a new lease; writes the node state file.
    async fn hold(&mut self, client: &mut Client, network: &ClusterNetwork) -> Result<()> {
        if let Some(held) = &self.held {
            let alive = rpc(client.lease_time_to_live(held.lease, None)).await?;
            if alive.ttl() <= 0 {
                self.held = None;
            }
        }
        if self.held.is_none() {
            let ttl = self.settings.lease_ttl.as_secs().max(1) as i64;
            let lease = rpc(client.lease_grant(ttl, None)).await?.id();
            let record = self.record(network);
            let mut cidrs = Vec::new();
            for pool in network.pools() {
                let v6 = pool.cluster_cidr.addr().is_ipv6();
                let claim = Claim {
                    keys: &self.keys,
                    pool,
                    record: &record,
                    given: self.settings.given(&pool),
                    previous: self
                        .previous
                        .iter()
                        .find(|c| c.addr().is_ipv6() == v6)
                        .copied(),
                };
                match lease::claim(client, &claim, lease).await {
                    Ok(cidr) => cidrs.push(cidr),
                    Err(e) => {
                        // Revoking takes the other family's key with it.
                        let _ = rpc(client.lease_revoke(lease)).await;
                        return Err(e);
                    }
                }
            }
            let listed: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
            log::info!(
                "cluster: node {} holds {} (lease {lease:x}, TTL {ttl} s)",
                self.settings.node_name,
                listed.join(" and ")
            );
            self.previous = cidrs.clone();
            self.held = Some(Held { cidrs, lease });
        }
        let held = self.held.as_ref().expect("held");
        let Some(IpNet::V4(cidr)) = held.of_family(false) else {
            unreachable!("every node holds an IPv4 CIDR");
        };
        let cidr_v6 = match held.of_family(true) {
            Some(IpNet::V6(v6)) => Some(v6),
            _ => None,
        };
        let mtu = if network.backend.tunnels() {
            self.underlay.mtu - TUNNEL_OVERHEAD
        } else {
            self.underlay.mtu
        };
        let state = NodeState {
            node_name: self.settings.node_name.clone(),
            pod_cidr: cidr,
            pod_cidr_v6: cidr_v6,
            mtu,
            backend: network.backend,
            underlay: self.underlay.address,
            underlay_v6: self.underlay.address_v6,
        };
        if self.written.as_ref() != Some(&state) {
            node_state::write(&self.settings.state_dir, &state)?;
            log::info!(
                "cluster: wrote {} (pod CIDR {cidr}{}, MTU {mtu})",
                node_state::path(&self.settings.state_dir).display(),
                cidr_v6.map(|c| format!(" and {c}")).unwrap_or_default()
            );
            self.written = Some(state);
        }
        Ok(())
    }

    fn record(&self, network: &ClusterNetwork) -> SubnetRecord {
        SubnetRecord {
            node_name: self.settings.node_name.clone(),
            underlay: self.underlay.address,
            underlay_v6: self.underlay.address_v6,
            backend: network.backend,
            vtep: network.backend.tunnels().then_some(network.vxlan),
        }
    }

    async fn ensure_tunnel(&mut self, network: &ClusterNetwork) {
        let tunnel = peers::TunnelSettings {
            vni: network.vxlan.vni,
            port: network.vxlan.port,
            local: self.underlay.address,
            underlay_ifname: self.underlay.ifname.clone(),
            mtu: self.underlay.mtu - TUNNEL_OVERHEAD,
            // The node's own packets to other nodes' pods leave from its
            // pods' gateway address of each family (host-local never hands
            // it to a pod), so the answers come back through the tunnel.
            addresses: self
                .held
                .iter()
                .flat_map(|h| h.cidrs.iter().map(|c| gateway_of(*c)))
                .collect(),
        };
        // Without it, VXLAN peers stay pending and are retried; native
        // peers work regardless.
        match self.table.datapath().ensure_tunnel(&tunnel).await {
            Ok(()) => self.tunnel_ready = true,
            Err(e) => {
                log::warn!("cluster: the VXLAN device is not ready (retrying): {e}")
            }
        }
    }

    /// Resumes the watch after the last revision programmed, or lists
    /// everything (first connection, or after a compaction) and watches
    /// from the list's revision on.
    async fn catch_up(&mut self, client: &mut Client) -> Result<SubnetWatch> {
        if let Some(revision) = self.revision {
            return SubnetWatch::start(client, &self.keys, revision + 1).await;
        }
        let (listed, revision) = watch::list_subnets(client, &self.keys).await?;
        let others: BTreeMap<IpNet, SubnetRecord> = watch::records(&listed)
            .into_iter()
            .filter(|(cidr, _)| !self.owns(cidr))
            .collect();
        self.table.sync(&others).await;
        log::info!("cluster: {} peer(s) at revision {revision}", others.len());
        self.revision = Some(revision);
        SubnetWatch::start(client, &self.keys, revision + 1).await
    }

    /// Programs `changes`; returns whether this node's own key went away.
    async fn apply(&mut self, changes: Vec<Change>) -> bool {
        let mut lost = false;
        for change in changes {
            match change {
                Change::Delete(cidr) if self.owns(&cidr) => lost = true,
                Change::Put(cidr, _) if self.owns(&cidr) => {}
                Change::Put(cidr, Some(record)) => self.table.upsert(cidr, &record).await,
                // Unreadable: the CIDR is taken, but not by a peer we understand.
                Change::Put(cidr, None) | Change::Delete(cidr) => self.table.remove(cidr).await,
            }
        }
        lost
    }

    /// What to check when a plain connection fails at the transport
    /// level: a TLS-only etcd closes it without a word the client reads
    /// (not said when nothing listens: etcd is down).
    fn hint(&self, e: &ClusterError) -> &'static str {
        let plain = self.settings.tls.ca_file.is_none();
        match e {
            ClusterError::Etcd(etcd_client::Error::TransportError(_))
            | ClusterError::Etcd(etcd_client::Error::GRpcStatus(_))
                if plain && !e.detailed().contains("Connection refused") =>
            {
                " (if etcd serves TLS, give https:// endpoints and --etcd-cafile, --etcd-certfile, --etcd-keyfile)"
            }
            _ => "",
        }
    }

    /// Whether `cidr` is one of this node's own.
    fn owns(&self, cidr: &IpNet) -> bool {
        self.held.as_ref().is_some_and(|h| h.cidrs.contains(cidr))
    }
}

/// host-local's default gateway of a pod CIDR: its first address.
fn gateway_of(cidr: IpNet) -> IpAddr {
    match cidr {
        IpNet::V4(v4) => Ipv4Addr::from(u32::from(v4.network()) + 1).into(),
        IpNet::V6(v6) => Ipv6Addr::from(u128::from(v6.network()) + 1).into(),
    }
}

async fn connect(endpoints: &[String], tls: Option<TlsOptions>) -> Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        // HTTP/2 pings find a dead connection (etcd gone) under a watch
        // that would otherwise wait forever.
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let Some(tls) = tls {
        options = options.with_tls(tls);
    }
    rpc(Client::connect(endpoints, Some(options))).await
}

/// One etcd request, bounded by [`REQUEST_TIMEOUT`].
pub(super) async fn rpc<T>(
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClusterError::Protocol(format!(
            "no answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}
