//! Certificates for a TLS etcd, made at test time with rcgen (ECDSA P-256):
//! a CA, etcd's server certificate for its address, a client certificate
//! the CA signed, and a client certificate of another CA, each a PEM file
//! in a temp directory removed on drop.
//!
//! ```text
//! <dir>/ca.pem                                 the cluster's CA
//! <dir>/server.pem, server-key.pem             etcd (IP SAN = its address)
//! <dir>/client.pem, client-key.pem             a node, signed by the CA
//! <dir>/stranger.pem, stranger-key.pem         a node, signed by another CA
//! ```

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// One client's certificate and key files.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// Makes every file, the server's certificate valid for `server_ip`.
    pub fn new(server_ip: IpAddr) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cni-ebpf-pki-")
            .tempdir()
            .expect("creating the certificates' directory");
        let ca = certificate_authority("cni-ebpf test etcd CA");
        write(dir.path(), "ca.pem", &ca.pem());
        let server = leaf(
            &ca,
            "etcd",
            vec![server_ip.to_string()],
            // etcd 3.4's gateway dials etcd itself with the server's
            // certificate, so it is a client certificate too.
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        write(dir.path(), "server.pem", &server.0);
        write(dir.path(), "server-key.pem", &server.1);
        let client = leaf(
            &ca,
            "node",
            vec![],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        write(dir.path(), "client.pem", &client.0);
        write(dir.path(), "client-key.pem", &client.1);
        let other_ca = certificate_authority("another CA");
        let stranger = leaf(
            &other_ca,
            "node",
            vec![],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        write(dir.path(), "stranger.pem", &stranger.0);
        write(dir.path(), "stranger-key.pem", &stranger.1);
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn server(&self) -> ClientFiles {
        self.files("server")
    }

    /// A client certificate of the cluster's CA.
    pub fn client(&self) -> ClientFiles {
        self.files("client")
    }

    /// A client certificate of another CA.
    pub fn stranger(&self) -> ClientFiles {
        self.files("stranger")
    }

    fn files(&self, name: &str) -> ClientFiles {
        ClientFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}-key.pem")),
        }
    }
}

fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generating the CA's key");
    CertifiedIssuer::self_signed(params, key).expect("self-signing the CA")
}

/// A certificate signed by `ca` and its key, both PEM.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    alt_names: Vec<String>,
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> (String, String) {
    let mut params = CertificateParams::new(alt_names).expect("certificate parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("generating a key");
    let cert = params.signed_by(&key, ca).expect("signing a certificate");
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, pem: &str) {
    fs::write(dir.join(name), pem).unwrap_or_else(|e| panic!("writing {name}: {e}"));
}
