//! A namespace's TCP segment counters (`/proc/net/snmp`): how many segments
//! its sockets sent, and how many of them again.

use crate::netns::Netns;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpSegments {
    pub out: u64,
    pub retransmitted: u64,
}

impl TcpSegments {
    /// The counters of `ns` now.
    pub fn of(ns: &Netns) -> Self {
        // `/proc/self/net` is the thread group leader's namespace.
        let snmp = ns
            .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
            .expect("reading /proc/net/snmp");
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
            panic!("no Tcp lines in /proc/net/snmp:\n{snmp}");
        };
        let field = |name: &str| {
            names
                .split_whitespace()
                .position(|n| n == name)
                .and_then(|i| values.split_whitespace().nth(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no Tcp {name} in /proc/net/snmp"))
        };
        Self {
            out: field("OutSegs"),
            retransmitted: field("RetransSegs"),
        }
    }

    /// What was counted since `before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            out: self.out - before.out,
            retransmitted: self.retransmitted - before.retransmitted,
        }
    }
}
