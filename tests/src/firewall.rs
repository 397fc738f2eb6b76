//! Whether a namespace has any packet-filter state: the datapath must work
//! with empty iptables and nftables rulesets.

use std::path::PathBuf;

use crate::netns::Netns;

/// Tools that print a namespace's rulesets; `iptables-save` prints nothing
/// at all for a namespace no table was ever created in.
const DUMPS: &[(&str, &[&str])] = &[
    ("iptables-save", &[]),
    ("ip6tables-save", &[]),
    ("iptables-legacy-save", &[]),
    ("ip6tables-legacy-save", &[]),
    ("nft", &["list", "ruleset"]),
];

/// Lines of firewall state found in `ns`, prefixed by the tool that printed
/// them; empty when every ruleset is empty. A table holding only built-in
/// chains with policy ACCEPT and no rule (what merely listing a legacy
/// table can create) counts as empty for the iptables tools; for nftables
/// any table counts.
pub fn rules(ns: &Netns) -> Vec<String> {
    let mut found = Vec::new();
    for (tool, args) in DUMPS {
        let Some(program) = find_tool(tool) else {
            continue;
        };
        let stdout = ns.exec_ok(&program.to_string_lossy(), args);
        for line in stdout.lines().map(str::trim) {
            let empty_default = line.is_empty()
                || line.starts_with('#')
                || line == "COMMIT"
                || (*tool != "nft" && line.starts_with('*'))
                || (*tool != "nft" && is_builtin_accept_chain(line));
            if !empty_default {
                found.push(format!("{tool}: {line}"));
            }
        }
    }
    found
}

/// `:INPUT ACCEPT [0:0]` and the like.
fn is_builtin_accept_chain(line: &str) -> bool {
    let mut parts = line.split_whitespace();
    let chain = parts.next().unwrap_or_default();
    let policy = parts.next().unwrap_or_default();
    matches!(
        chain,
        ":INPUT" | ":OUTPUT" | ":FORWARD" | ":PREROUTING" | ":POSTROUTING"
    ) && policy == "ACCEPT"
}

/// `tool` on `PATH` or in the sbin directories a non-login root may lack.
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_builtin_accept_chains_are_default() {
        assert!(is_builtin_accept_chain(":INPUT ACCEPT [0:0]"));
        assert!(is_builtin_accept_chain(":POSTROUTING ACCEPT [3:180]"));
        assert!(!is_builtin_accept_chain(":INPUT DROP [0:0]"));
        assert!(!is_builtin_accept_chain(":CNI-HOSTPORT-DNAT - [0:0]"));
        assert!(!is_builtin_accept_chain("-A FORWARD -j ACCEPT"));
    }
}
