//! The `bandwidth` capability and static fields, as the reference bandwidth
//! plugin reads them: `ingressRate`/`egressRate` in bits per second,
//! `ingressBurst`/`egressBurst` in bits, each direction optional;
//! `runtimeConfig.bandwidth` wins over the static fields. Enforced in the
//! datapath (see `cni-ebpf/src/rate.rs`) instead of tbf + ifb.

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
    let burst = number(obj, prefix, burst_key)?;
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
