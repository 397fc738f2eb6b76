//! The `bandwidth` capability and static fields, as the reference bandwidth
//! plugin reads them: `ingressRate`/`egressRate` in bits per second,
//! `ingressBurst`/`egressBurst` in bits, each direction optional;
//! `runtimeConfig.bandwidth` wins over the static fields. Enforced in the
//! datapath (see `cni-ebpf/src/rate.rs`) instead of tbf + ifb.
//!
//! Kubernetes has no burst annotation: for a pod with the
//! `kubernetes.io/{ingress,egress}-bandwidth` annotations each runtime
//! writes its own "no limit" burst ([`UNSET_BURSTS`]), which the reference
//! plugin takes literally (containerd's lets ~512 MB through at line rate
//! before the limit bites). Here those values mean the rate over 1/10 s
//! (100 ms), so an annotated pod is held to its rate from its first second.

use cni_ebpf_userspace::rate::Limit;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bandwidth {
    pub ingress: Option<Limit>,
    pub egress: Option<Limit>,
}

impl Bandwidth {
    pub fn is_limited(&self) -> bool {
        self.ingress.is_some() || self.egress.is_some()
    }
}

/// The bursts runtimes send for "unset": containerd `math.MaxUint32`,
/// CRI-O `math.MaxUint32*8` and later `math.MaxUint32*8 - 1`, kubelet's
/// dockershim `math.MaxInt32`.
pub const UNSET_BURSTS: [u64; 4] = [
    u32::MAX as u64,
    u32::MAX as u64 * 8,
    u32::MAX as u64 * 8 - 1,
    i32::MAX as u64,
];

/// An unset burst is the rate over 1/10 s.
pub const DEFAULT_BURST_DIVISOR: u64 = 10;

/// Why a rate and burst pair is refused; the config names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandwidthError {
    /// A rate without a burst.
    BurstMissing,
    /// A burst without a rate.
    RateMissing,
    /// A burst of 4 GiB or more (the datapath counts bytes in 32 bits).
    BurstTooLarge,
}

/// One direction's limit from its rate and burst (0: unset); an unset
/// burst ([`UNSET_BURSTS`]) is the rate over 1/10 s.
pub fn limit(rate: u64, burst: u64) -> Result<Option<Limit>, BandwidthError> {
    let burst = match burst {
        burst if !UNSET_BURSTS.contains(&burst) => burst,
        _ if rate == 0 => 0,
        _ => (rate / DEFAULT_BURST_DIVISOR).max(1),
    };
    match (rate, burst) {
        (0, 0) => Ok(None),
        (_, 0) => Err(BandwidthError::BurstMissing),
        (0, _) => Err(BandwidthError::RateMissing),
        (_, b) if b / 8 >= u64::from(u32::MAX) => Err(BandwidthError::BurstTooLarge),
        (rate, burst) => Ok(Some(Limit {
            rate_bits: rate,
            burst_bits: burst,
        })),
    }
}
