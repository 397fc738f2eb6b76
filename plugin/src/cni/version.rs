//! The spec versions this plugin speaks and the answer to VERSION.

use serde_json::{Value, json};

/// Every spec version this plugin accepts in `cniVersion`, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version, used when the caller does not name one.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Whether `version` is one of [`SUPPORTED_VERSIONS`], matched exactly as
/// libcni's reconciler does (`"1.0"` is not `"1.0.0"`).
pub fn is_supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// `"0.4.0"` -> `(0, 4, 0)`; `None` unless it is three dot-separated numbers.
pub fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let parsed = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(parsed)
}

/// Whether `version` is `minimum` or newer; an unparsable version is not.
pub fn at_least(version: &str, minimum: &str) -> bool {
    match (parse_version(version), parse_version(minimum)) {
        (Some(v), Some(min)) => v >= min,
        _ => false,
    }
}

/// Results before 1.0.0 carry `ips[].version` ("4" or "6").
pub fn result_has_ip_version(version: &str) -> bool {
    parse_version(version).is_some_and(|v| v < (1, 0, 0))
}

/// The VERSION command's output. It answers in the caller's version when
/// that version is one we support, else in [`CURRENT_VERSION`].
pub fn version_output(config_version: Option<&str>) -> Value {
    let cni_version = config_version
        .filter(|v| is_supported(v))
        .unwrap_or(CURRENT_VERSION);
    json!({
        "cniVersion": cni_version,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_version_is_supported_and_nothing_else() {
        for v in SUPPORTED_VERSIONS {
            assert!(is_supported(v), "{v}");
        }
        for v in ["0.1.0", "0.2.0", "1.0", "1.2.0", "", "v1.0.0"] {
            assert!(!is_supported(v), "{v}");
        }
        assert!(is_supported(CURRENT_VERSION));
    }

    #[test]
    fn parses_three_numbers_only() {
        assert_eq!(parse_version("0.4.0"), Some((0, 4, 0)));
        assert_eq!(parse_version("1.10.2"), Some((1, 10, 2)));
        assert_eq!(parse_version("1.0"), None);
        assert_eq!(parse_version("1.0.0.0"), None);
        assert_eq!(parse_version("1.x.0"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn compares_numerically_not_lexically() {
        assert!(at_least("1.1.0", "0.4.0"));
        assert!(at_least("0.4.0", "0.4.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        assert!(at_least("0.10.0", "0.4.0"));
        assert!(!at_least("garbage", "0.4.0"));
    }

    #[test]
    fn ip_version_field_only_before_1_0_0() {
        assert!(result_has_ip_version("0.3.0"));
        assert!(result_has_ip_version("0.3.1"));
        assert!(result_has_ip_version("0.4.0"));
        assert!(!result_has_ip_version("1.0.0"));
        assert!(!result_has_ip_version("1.1.0"));
    }

    #[test]
    fn version_output_echoes_a_supported_config_version() {
        let out = version_output(Some("0.4.0"));
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["supportedVersions"], json!(SUPPORTED_VERSIONS));
    }

    #[test]
    fn version_output_falls_back_to_current() {
        assert_eq!(version_output(None)["cniVersion"], "1.1.0");
        assert_eq!(version_output(Some("0.2.0"))["cniVersion"], "1.1.0");
        assert_eq!(
            version_output(None)["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
}
