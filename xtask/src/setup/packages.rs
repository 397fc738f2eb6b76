//! Debian packages the privileged tests and the benchmarks run.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::report;
use crate::{exec::Context, host};

const PACKAGES: &[&str] = &[
    "iperf3",
    "sockperf",
    // The request/response latency over IPv6: Debian's sockperf 3.7 takes
    // no IPv6 address, qperf's tcp_lat/udp_lat do.
    "qperf",
    "iproute2",
    "bpftool",
    "containernetworking-plugins",
    "iptables",
    "nftables",
    "iputils-ping",
    "ethtool",
    // The CRI tests run a private containerd (never the system service)
    // whose shim starts sandboxes with crun.
    "containerd",
    "runc",
    "crun",
    // The cluster tests' datastore (etcd 3.4) and etcdctl.
    "etcd-server",
    "etcd-client",
    // protoc: the etcd client crate compiles etcd's gRPC protos when it builds.
    "protobuf-compiler",
    // `cargo xtask image` builds the node image from scratch with it, from
    // binaries linked statically against glibc's libc.a.
    "buildah",
    "libc6-dev",
    // The image tests run the image with it.
    "podman",
    // The Kubernetes API tests make a CA and a server certificate with it.
    "openssl",
    // A venv for PyPI's kubernetes-validate (deploy/ manifests' schemas).
    "python3-venv",
];

pub fn ensure(ctx: &Context) -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        report("packages", &format!("ok ({})", PACKAGES.join(" ")));
        return Ok(());
    }
    report(
        "packages",
        &format!("missing {}, installing", missing.join(" ")),
    );
    if !ctx.dry_run && !host::is_root()? {
        bail!(
            "installing Debian packages needs root; run as root, or first: \
             sudo apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
    }
    ctx.run("setup", Command::new("apt-get").arg("update"))?;
    ctx.run(
        "setup",
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    if ctx.dry_run {
        return Ok(());
    }
    let still_missing = missing_packages()?;
    if !still_missing.is_empty() {
        bail!("apt-get did not install {}", still_missing.join(" "));
    }
    report("packages", "installed");
    Ok(())
}

fn missing_packages() -> Result<Vec<&'static str>> {
    // Exits non-zero when a package is unknown to dpkg; stdout still lists
    // the known ones, which is all we need.
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(PACKAGES)
        .output()
        .context("running dpkg-query (setup supports Debian hosts only)")?;
    Ok(not_installed(&String::from_utf8_lossy(&output.stdout)))
}

/// The packages of `PACKAGES` that `dpkg-query` output does not show as
/// `install ok installed`.
fn not_installed(dpkg_query: &str) -> Vec<&'static str> {
    PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            !dpkg_query.lines().any(|line| {
                line.split_once(' ').is_some_and(|(name, status)| {
                    // Multi-arch packages print as `name:arch`.
                    name.split(':').next() == Some(package) && status == "install ok installed"
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_and_unknown_packages_are_missing() {
        let output = "iperf3 install ok installed\n\
                      sockperf deinstall ok config-files\n\
                      qperf install ok installed\n\
                      iproute2 install ok installed\n\
                      bpftool install ok installed\n\
                      containernetworking-plugins install ok installed\n\
                      iptables:amd64 install ok installed\n\
                      nftables install ok installed\n\
                      ethtool install ok installed\n\
                      containerd install ok installed\n\
                      runc install ok installed\n\
                      crun install ok installed\n\
                      etcd-server install ok installed\n\
                      etcd-client install ok installed\n\
                      protobuf-compiler install ok installed\n\
                      buildah install ok installed\n\
                      libc6-dev:amd64 install ok installed\n\
                      podman install ok installed\n\
                      openssl install ok installed\n\
                      python3-venv install ok installed\n";
        assert_eq!(not_installed(output), ["sockperf", "iputils-ping"]);
    }
}
