//! etcd over TLS: the CA that signed etcd's server certificate, and the
//! node's client certificate and key (etcd's `--client-cert-auth`), named
//! as flannel names them (`--etcd-cafile`, `--etcd-certfile`,
//! `--etcd-keyfile`).
//!
//! The files are read again at every connection, so certificates rotated
//! on disk are used from the next reconnect on (a live connection keeps the
//! ones it was made with: etcd checks a client certificate at the
//! handshake only). The first read happens before the agent starts, and a
//! bad file there ends it naming the flag and the file.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use etcd_client::{Certificate, Identity, TlsOptions};
use rustls::{RootCertStore, crypto::ring, sign::CertifiedKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::{ClusterError, Result};

const HTTP: &str = "http://";
const HTTPS: &str = "https://";

/// The TLS files of cluster mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// `--etcd-cafile`: PEM certificates trusted for etcd's server
    /// certificate (no system roots: the node image has none).
    pub ca_file: Option<PathBuf>,
    /// `--etcd-certfile`: the node's PEM client certificate (chain).
    pub cert_file: Option<PathBuf>,
    /// `--etcd-keyfile`: its PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

impl EtcdTls {
    fn any(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Checks that the endpoints and the files go together: TLS files need
    /// `https://` endpoints, `https://` needs a CA, a certificate needs its
    /// key. Then reads them once ([`EtcdTls::options`]).
    pub fn check(&self, endpoints: &[String]) -> Result<()> {
        let https = endpoints.iter().filter(|e| e.starts_with(HTTPS)).count();
        if let Some(plain) = endpoints.iter().find(|e| e.starts_with(HTTP))
            && self.any()
        {
            return Err(ClusterError::Config(format!(
                "--etcd-endpoints {plain} is plain HTTP, but TLS files are set ({}): \
                 write the endpoints as https://",
                self.flags()
            )));
        }
        if https > 0 && self.ca_file.is_none() {
            return Err(ClusterError::Config(
                "--etcd-endpoints are https:// but --etcd-cafile is not set \
                 (the CA that signed etcd's server certificate)"
                    .into(),
            ));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(ClusterError::Config(
                    "--etcd-certfile is set without --etcd-keyfile".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ClusterError::Config(
                    "--etcd-keyfile is set without --etcd-certfile".into(),
                ));
            }
            _ => {}
        }
        self.options().map(|_| ())
    }

    /// The etcd client's TLS options read from the files now, or `None`
    /// without TLS.
    pub fn options(&self) -> Result<Option<TlsOptions>> {
        let Some(ca_file) = &self.ca_file else {
            return Ok(None);
        };
        let ca = read("--etcd-cafile", ca_file)?;
        let mut roots = RootCertStore::empty();
        for cert in certificates("--etcd-cafile", ca_file, &ca)? {
            roots.add(cert).map_err(|e| {
                bad(
                    "--etcd-cafile",
                    ca_file,
                    &format!("not a CA certificate: {e}"),
                )
            })?;
        }
        let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let (Some(cert_file), Some(key_file)) = (&self.cert_file, &self.key_file) {
            let cert = read("--etcd-certfile", cert_file)?;
            let key = read("--etcd-keyfile", key_file)?;
            check_pair(cert_file, &cert, key_file, &key)?;
            options = options.identity(Identity::from_pem(cert, key));
        }
        Ok(Some(options))
    }

    /// The flags set, with their files, for messages.
    fn flags(&self) -> String {
        let mut flags = String::new();
        for (flag, file) in [
            ("--etcd-cafile", &self.ca_file),
            ("--etcd-certfile", &self.cert_file),
            ("--etcd-keyfile", &self.key_file),
        ] {
            if let Some(file) = file {
                if !flags.is_empty() {
                    flags.push_str(", ");
                }
                let _ = write!(flags, "{flag} {}", file.display());
            }
        }
        flags
    }
}

/// The key is a private key that belongs to the first certificate.
fn check_pair(cert_file: &Path, cert: &[u8], key_file: &Path, key: &[u8]) -> Result<()> {
    let chain = certificates("--etcd-certfile", cert_file, cert)?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        bad(
            "--etcd-keyfile",
            key_file,
            &format!("no PEM private key: {e}"),
        )
    })?;
    let provider = ring::default_provider();
    match CertifiedKey::from_der(chain, key, &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(ClusterError::Config(format!(
            "--etcd-keyfile {} does not belong to the certificate in --etcd-certfile {}",
            key_file.display(),
            cert_file.display()
        ))),
        Err(e) => Err(bad(
            "--etcd-keyfile",
            key_file,
            &format!("unusable key: {e}"),
        )),
    }
}

fn read(flag: &str, file: &Path) -> Result<Vec<u8>> {
    std::fs::read(file).map_err(|e| bad(flag, file, &format!("cannot read it: {e}")))
}

/// Every PEM certificate in `pem`; at least one.
fn certificates(flag: &str, file: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(flag, file, &format!("unreadable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(flag, file, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn bad(flag: &str, file: &Path, what: &str) -> ClusterError {
    ClusterError::Config(format!("{flag} {}: {what}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(tls: &EtcdTls, endpoint: &str) -> String {
        match tls.check(&[endpoint.to_string()]) {
            Err(ClusterError::Config(message)) => message,
            other => panic!("{tls:?} at {endpoint}: {other:?}"),
        }
    }

    #[test]
    fn endpoints_and_files_go_together() {
        let plain = EtcdTls::default();
        assert!(plain.check(&["http://10.0.0.5:2379".into()]).is_ok());
        assert!(plain.check(&["10.0.0.5:2379".into()]).is_ok());
        assert_eq!(
            refused(&plain, "https://10.0.0.5:2379"),
            "--etcd-endpoints are https:// but --etcd-cafile is not set \
             (the CA that signed etcd's server certificate)"
        );
        let ca_only = EtcdTls {
            ca_file: Some("/etc/etcd/ca.pem".into()),
            ..EtcdTls::default()
        };
        assert_eq!(
            refused(&ca_only, "http://10.0.0.5:2379"),
            "--etcd-endpoints http://10.0.0.5:2379 is plain HTTP, but TLS files are set \
             (--etcd-cafile /etc/etcd/ca.pem): write the endpoints as https://"
        );
        let no_key = EtcdTls {
            cert_file: Some("/etc/etcd/node.pem".into()),
            ..ca_only.clone()
        };
        assert_eq!(
            refused(&no_key, "https://10.0.0.5:2379"),
            "--etcd-certfile is set without --etcd-keyfile"
        );
        assert_eq!(
            refused(&ca_only, "https://10.0.0.5:2379"),
            "--etcd-cafile /etc/etcd/ca.pem: cannot read it: No such file or directory (os error 2)"
        );
    }
}
