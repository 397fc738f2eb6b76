//! `to_pod`: tc egress of the host veth of a pod with an ingress limit, for
//! what the node's stack delivers to it (traffic from the node itself and
//! from other interfaces). What the datapath delivers with
//! `bpf_redirect_peer` skips this hook and is charged where it is redirected.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use cni_ebpf_common::{Direction, IpKey};

use crate::{
    counters::{count_drop, count_endpoint},
    headers::{ETH_LEN, ETH_P_IP, EthHdr, Ipv4Hdr, header},
    maps::ENDPOINTS,
    rate::{Way, charge},
};

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    let Some(eth) = header::<EthHdr>(&ctx, 0) else {
        return TC_ACT_OK;
    };
    // SAFETY: bounds-checked.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IP {
        return TC_ACT_OK;
    }
    let Some(ip) = header::<Ipv4Hdr>(&ctx, ETH_LEN) else {
        return TC_ACT_OK;
    };
    // SAFETY: bounds-checked; copied out at once.
    let Some(endpoint) = (unsafe { ENDPOINTS.get(&IpKey::v4((*ip).daddr)) }).copied() else {
        return TC_ACT_OK;
    };
    match charge(&ctx, &endpoint, Way::Ingress) {
        Ok(()) => {
            count_endpoint(endpoint.ifindex, Direction::ToPod, ctx.len());
            TC_ACT_OK
        }
        Err(reason) => {
            count_drop(reason, Direction::ToPod, ctx.len());
            TC_ACT_SHOT
        }
    }
}
