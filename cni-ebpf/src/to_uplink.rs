//! `to_uplink`: tc egress of the node's uplink, attached on nodes with
//! netfilter services. What the datapath sends out itself carries its mark
//! and passes untouched (the mark is cleared). A pod's packet without the
//! mark was forwarded by the stack: a flow netfilter translated (a service
//! whose endpoint is off the node). Its replies are recorded so that they go
//! back through conntrack, and it is masqueraded here like the datapath's
//! own flows when its destination is outside the no-masquerade CIDRs (the
//! stack has no masquerade rule for pods). IPv6 alike: its replies are
//! recorded ([`netfilter::leaving_v6`]) and it is masqueraded under IPv6's
//! settings ([`masquerade_v6`]).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use cni_ebpf_common::{Direction, DropReason, IpKey, MARK_DATAPATH_FORWARDED, NODE_F_MASQUERADE};

use crate::{
    counters::count_drop,
    headers::{ETH_LEN, Ipv6Hdr, header, ipv4_headers},
    l4,
    log::log_drop,
    maps::{ENDPOINTS, NO_MASQ, NODE_CONFIG},
    nat::{snat, snat_inline},
    netfilter, translate6,
};

#[classifier]
pub fn to_uplink(ctx: TcContext) -> i32 {
    match try_to_uplink(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count_drop(reason, Direction::FromPod, ctx.len());
            log_drop(&ctx, reason, Direction::FromPod);
            TC_ACT_SHOT
        }
    }
}

fn try_to_uplink(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: the context pointer is valid for the whole program run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if mark & MARK_DATAPATH_FORWARDED != 0 {
        ctx.set_mark(mark & !MARK_DATAPATH_FORWARDED);
        return Ok(TC_ACT_OK);
    }
    // Without services the datapath does not mark its own packets.
    let Some(cfg) = NODE_CONFIG.get(0).copied().filter(netfilter::enabled) else {
        return Ok(TC_ACT_OK);
    };
    let Some((_, ip)) = ipv4_headers(ctx) else {
        if netfilter::leaving_v6(ctx) {
            masquerade_v6(ctx)?;
        }
        return Ok(TC_ACT_OK);
    };
    // SAFETY: bounds-checked.
    let (src, dst) = unsafe { ((*ip).saddr, (*ip).daddr) };
    if ENDPOINTS.get_ptr(&IpKey::v4(src)).is_none() {
        return Ok(TC_ACT_OK);
    }
    let Some(transport) = l4::parse(ctx, ip) else {
        return Ok(TC_ACT_OK);
    };
    netfilter::remember_replies(src, dst, &transport, src);
    let masquerade = cfg.flags & NODE_F_MASQUERADE != 0
        && NO_MASQ.get(Key::new(128, IpKey::v4(dst).addr)).is_none();
    if masquerade {
        snat(ctx, src, dst, &transport, &cfg)?;
    }
    Ok(TC_ACT_OK)
}

/// A pod's IPv6 packet the stack forwarded ([`netfilter::leaving_v6`]
/// recorded it), masqueraded as IPv4's is when IPv6 masquerade is on and
/// its destination is outside the no-masquerade CIDRs. A leaf of its own,
/// called after the recording returned: the translation's frame (16-byte
/// keys and entries) under the recording's would pass the verifier's 512
/// bytes for a call chain.
#[inline(never)]
fn masquerade_v6(ctx: &TcContext) -> Result<(), DropReason> {
    let Some(cfg) = NODE_CONFIG.get(0) else {
        return Ok(());
    };
    let ip: *mut Ipv6Hdr = header(ctx, ETH_LEN).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked.
    let dst = unsafe { (*ip).daddr };
    if !translate6::masquerades(dst) {
        return Ok(());
    }
    let Some(transport) = l4::parse_v6(ctx, ip) else {
        return Ok(());
    };
    // SAFETY: bounds-checked.
    unsafe { snat_inline(ctx, (*ip).saddr, dst, &transport, cfg) }?;
    Ok(())
}
