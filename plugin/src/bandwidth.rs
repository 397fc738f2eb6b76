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
use serde_json::Value;

use crate::error::{CniError, CniResult};

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

fn invalid(field: &str, why: &str) -> CniError {
    CniError::invalid_config(format!("invalid field \"{field}\": {why}"))
}

fn number(obj: &Value, prefix: &str, key: &str) -> CniResult<u64> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| invalid(&format!("{prefix}{key}"), "not a non-negative integer")),
    }
}

fn direction(
    obj: &Value,
    prefix: &str,
    rate_key: &str,
    burst_key: &str,
) -> CniResult<Option<Limit>> {
    let rate = number(obj, prefix, rate_key)?;
    let burst = match number(obj, prefix, burst_key)? {
        burst if !UNSET_BURSTS.contains(&burst) => burst,
        _ if rate == 0 => 0,
        _ => (rate / DEFAULT_BURST_DIVISOR).max(1),
    };
    match (rate, burst) {
        (0, 0) => Ok(None),
        (_, 0) => Err(invalid(
            &format!("{prefix}{burst_key}"),
            "if the rate is set, the burst must be set too",
        )),
        (0, _) => Err(invalid(
            &format!("{prefix}{rate_key}"),
            "if the burst is set, the rate must be set too",
        )),
        (_, b) if b / 8 >= u64::from(u32::MAX) => Err(invalid(
            &format!("{prefix}{burst_key}"),
            "the burst cannot be more than 4 GiB",
        )),
        (rate, burst) => Ok(Some(Limit {
            rate_bits: rate,
            burst_bits: burst,
        })),
    }
}

/// Reads the limits from `runtimeConfig.bandwidth`, else the static fields.
pub fn parse(raw: &Value, runtime_config: &Value) -> CniResult<Bandwidth> {
    let (obj, prefix) = match runtime_config.get("bandwidth") {
        Some(b) if !b.is_null() => (b, "runtimeConfig.bandwidth."),
        _ => (raw, ""),
    };
    Ok(Bandwidth {
        ingress: direction(obj, prefix, "ingressRate", "ingressBurst")?,
        egress: direction(obj, prefix, "egressRate", "egressBurst")?,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn runtime_config_wins_and_directions_are_optional() {
        let bw = parse(
            &json!({"ingressRate": 1, "ingressBurst": 1}),
            &json!({"bandwidth": {"egressRate": 100000000, "egressBurst": 1000000}}),
        )
        .unwrap();
        assert_eq!(bw.ingress, None);
        assert_eq!(
            bw.egress,
            Some(Limit {
                rate_bits: 100_000_000,
                burst_bits: 1_000_000
            })
        );
        assert!(!parse(&json!({}), &json!({})).unwrap().is_limited());
    }

    #[test]
    fn containerds_unset_burst_is_100_ms_at_the_rate() {
        let mut conf = json!({"runtimeConfig": {"bandwidth": {
            "IngressRate": 20_000_000, "IngressBurst": 4_294_967_295u64,
            "EgressRate": 0, "EgressBurst": 4_294_967_295u64
        }}});
        crate::cni::keys::canonicalize(&mut conf, &crate::cni::keys::NETWORK);
        let bw = parse(&json!({}), &conf["runtimeConfig"]).unwrap();
        assert_eq!(
            bw.ingress,
            Some(Limit {
                rate_bits: 20_000_000,
                burst_bits: 2_000_000
            })
        );
        assert_eq!(bw.egress, None);
        // CRI-O's and dockershim's "unset".
        for burst in [34_359_738_360u64, 34_359_738_359, 2_147_483_647] {
            let bw = parse(
                &json!({}),
                &json!({"bandwidth": {"egressRate": 1_000_000, "egressBurst": burst}}),
            )
            .unwrap();
            assert_eq!(bw.egress.unwrap().burst_bits, 100_000, "{burst}");
        }
        // A burst one bit smaller is taken as given.
        let bw = parse(
            &json!({"egressRate": 1_000_000, "egressBurst": 4_294_967_294u64}),
            &json!({}),
        )
        .unwrap();
        assert_eq!(bw.egress.unwrap().burst_bits, 4_294_967_294);
        // No annotation: containerd sends zeros.
        let bw = parse(
            &json!({}),
            &json!({"bandwidth": {"ingressRate": 0, "ingressBurst": 0, "egressRate": 0, "egressBurst": 0}}),
        )
        .unwrap();
        assert!(!bw.is_limited());
    }

    #[test]
    fn errors_name_the_field() {
        for (raw, rc, field) in [
            (json!({"ingressRate": 1000}), json!({}), "ingressBurst"),
            (json!({"egressBurst": 1000}), json!({}), "egressRate"),
            (
                json!({"egressRate": -5, "egressBurst": 1}),
                json!({}),
                "egressRate",
            ),
            (
                json!({}),
                json!({"bandwidth": {"ingressRate": "fast", "ingressBurst": 1}}),
                "runtimeConfig.bandwidth.ingressRate",
            ),
            (
                json!({"ingressRate": 1, "ingressBurst": 40_000_000_000u64}),
                json!({}),
                "ingressBurst",
            ),
        ] {
            let err = parse(&raw, &rc).unwrap_err();
            assert_eq!(err.code, crate::error::code::INVALID_CONFIG);
            assert!(err.msg.contains(field), "{} does not name {field}", err.msg);
        }
    }
}
