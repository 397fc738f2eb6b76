//! The result's DNS settings, read from a resolv.conf like host-local does.

use std::path::Path;

use crate::{
    cni::Dns,
    error::{CniError, CniResult},
};

/// Reads `nameserver`, `domain`, `search` and `options` lines; comments
/// (`#`, `;`) and anything else are skipped.
pub fn read_resolv_conf(path: &Path) -> CniResult<Dns> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CniError::io(format!("reading resolvConf {}", path.display()), e))?;
    Ok(parse_resolv_conf(&text))
}

fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines().map(str::trim) {
        if line.starts_with(['#', ';']) {
            continue;
        }
        let mut fields = line.split_whitespace();
        let Some(keyword) = fields.next() else {
            continue;
        };
        let values: Vec<String> = fields.map(str::to_owned).collect();
        let Some(first) = values.first().cloned() else {
            continue;
        };
        match keyword {
            "nameserver" => dns.nameservers.push(first),
            "domain" => dns.domain = Some(first),
            "search" => dns.search.extend(values),
            "options" => dns.options.extend(values),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_host_local() {
        let dns = parse_resolv_conf(
            "# generated\nnameserver 10.0.0.10\n; note\nnameserver fd00::a extra\n\
             domain example.com\nsearch a.example b.example\nsearch c.example\n\
             options ndots:5 edns0\nnameserver\nsortlist 10.0.0.0\n",
        );
        assert_eq!(dns.nameservers, ["10.0.0.10", "fd00::a"]);
        assert_eq!(dns.domain.as_deref(), Some("example.com"));
        assert_eq!(dns.search, ["a.example", "b.example", "c.example"]);
        assert_eq!(dns.options, ["ndots:5", "edns0"]);
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = read_resolv_conf(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert_eq!(err.code, crate::error::code::IO_FAILURE);
    }
}
