//! The cluster agent: one node's membership across connections to etcd
//! (join, keep the lease, follow the others, reconnect).

use std::{
    collections::BTreeMap,
    future::Future,
    net::Ipv4Addr,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use etcd_client::{Client, ConnectOptions};
use ipnet::Ipv4Net;
use tokio::sync::watch as signal;

use super::{
    ClusterError, ClusterNetwork, Result, SubnetRecord, Vtep,
    keys::Keys,
    lease::{self, Claim, Held},
    node_state::{self, NodeState},
    program::PeerTable,
    records::Backend,
    underlay::Underlay,
    watch::{self, Change, Step, SubnetWatch},
};
use crate::{
    BpffsLayout,
    peers::{self, TUNNEL_OVERHEAD},
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

/// Everything `cni-ebpfd run` was told about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub endpoints: Vec<String>,
    /// Key prefix of this cluster, e.g. `/cni-ebpf/<cluster-name>`.
    pub prefix: String,
    /// The network to create if the cluster has none yet.
    pub cluster_cidr: Option<Ipv4Net>,
    pub node_cidr_prefix: u8,
    /// A pod CIDR given to this node instead of a leased one.
    pub pod_cidr: Option<Ipv4Net>,
    pub node_name: String,
    pub underlay_address: Option<Ipv4Addr>,
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
        let bits = self.node_cidr_prefix.checked_sub(cluster_cidr.prefix_len());
        if !(1..=MAX_NODE_BITS).contains(&bits.unwrap_or(0)) || self.node_cidr_prefix > 30 {
            return Err(ClusterError::Config(format!(
                "--node-cidr-prefix {} must be longer than the cluster CIDR {cluster_cidr} by 1 to {MAX_NODE_BITS} bits, and at most 30",
                self.node_cidr_prefix
            )));
        }
        Ok(Some(ClusterNetwork {
            cluster_cidr: cluster_cidr.trunc(),
            node_cidr_prefix: self.node_cidr_prefix,
            backend: self.backend,
            vxlan: self.vtep,
        }))
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
    let wanted = settings.wanted_network()?;
    let underlay = Underlay::detect(settings.underlay_address)?;
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
        "cluster: node {} joins {} at {} (underlay {} on {}, MTU {})",
        settings.node_name,
        settings.prefix,
        settings.endpoints.join(","),
        underlay.address,
        underlay.ifname,
        underlay.mtu
    );
    let mut member = Member {
        keys: Keys::new(&settings.prefix),
        table: PeerTable::new(layout.clone(), settings.backend, underlay.clone()),
        previous: node_state::read(&settings.state_dir).map(|s| s.pod_cidr),
        held: None,
        revision: None,
        written: None,
        tunnel_ready: false,
        settings,
        wanted,
        underlay,
        layout,
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
            "cluster: etcd connection lost ({e}); the datapath keeps its peers; reconnecting in {} ms",
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
    layout: BpffsLayout,
    table: PeerTable,
    /// The CIDR of an earlier run or connection, preferred when claiming.
    previous: Option<Ipv4Net>,
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
        let mut client = connect(&self.settings.endpoints).await?;
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
            let claim = Claim {
                keys: &self.keys,
                network,
                record: &record,
                given: self.settings.pod_cidr,
                previous: self.previous,
            };
            let held = match lease::claim(client, &claim, lease).await {
                Ok(held) => held,
                Err(e) => {
                    let _ = rpc(client.lease_revoke(lease)).await;
                    return Err(e);
                }
            };
            log::info!(
                "cluster: node {} holds {} (lease {lease:x}, TTL {ttl} s)",
                self.settings.node_name,
                held.cidr
            );
            self.previous = Some(held.cidr);
            self.held = Some(held);
        }
        let cidr = self.held.as_ref().expect("held").cidr;
        let mtu = if network.backend.tunnels() {
            self.underlay.mtu - TUNNEL_OVERHEAD
        } else {
            self.underlay.mtu
        };
        let state = NodeState {
            node_name: self.settings.node_name.clone(),
            pod_cidr: cidr,
            mtu,
            backend: network.backend,
            underlay: self.underlay.address,
        };
        if self.written.as_ref() != Some(&state) {
            node_state::write(&self.settings.state_dir, &state)?;
            log::info!(
                "cluster: wrote {} (pod CIDR {cidr}, MTU {mtu})",
                node_state::path(&self.settings.state_dir).display()
            );
            self.written = Some(state);
        }
        Ok(())
    }

    fn record(&self, network: &ClusterNetwork) -> SubnetRecord {
        SubnetRecord {
            node_name: self.settings.node_name.clone(),
            underlay: self.underlay.address,
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
            // pods' gateway address (host-local never hands it to a pod),
            // so the answers come back through the tunnel.
            address: self.held.as_ref().map(|h| gateway_of(h.cidr)),
        };
        // Without it, VXLAN peers stay pending and are retried; native
        // peers work regardless.
        match peers::ensure_tunnel(&self.layout, &tunnel).await {
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
        let own = self.held.as_ref().map(|h| h.cidr);
        let others: BTreeMap<Ipv4Net, SubnetRecord> = watch::records(&listed)
            .into_iter()
            .filter(|(cidr, _)| Some(*cidr) != own)
            .collect();
        self.table.sync(&others).await;
        log::info!("cluster: {} peer(s) at revision {revision}", others.len());
        self.revision = Some(revision);
        SubnetWatch::start(client, &self.keys, revision + 1).await
    }

    /// Programs `changes`; returns whether this node's own key went away.
    async fn apply(&mut self, changes: Vec<Change>) -> bool {
        let own = self.held.as_ref().map(|h| h.cidr);
        let mut lost = false;
        for change in changes {
            match change {
                Change::Delete(cidr) if Some(cidr) == own => lost = true,
                Change::Put(cidr, _) if Some(cidr) == own => {}
                Change::Put(cidr, Some(record)) => self.table.upsert(cidr, &record).await,
                // Unreadable: the CIDR is taken, but not by a peer we understand.
                Change::Put(cidr, None) | Change::Delete(cidr) => self.table.remove(cidr).await,
            }
        }
        lost
    }
}

/// host-local's default gateway of a pod CIDR: its first address.
fn gateway_of(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}

async fn connect(endpoints: &[String]) -> Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        // HTTP/2 pings find a dead connection (etcd gone) under a watch
        // that would otherwise wait forever.
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
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
