//! This node's Node object from the Kubernetes API, read with kube's client
//! the way a pod reads it (client-go's in-cluster config): the API server
//! at `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, the
//! service account's token and CA bundle from its mounted directory. kube's
//! own `Config::incluster()` reads the same, but from a fixed directory;
//! here the directory and the server can be given, so tests can point the
//! same code at a server of their own.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::core::v1::Node;
use rustls_pki_types::{CertificateDer, pem::PemObject as _};

use super::{InstallError, Result};

/// Where the kubelet mounts a pod's service account credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How install reaches the API server.
#[derive(Debug, Clone)]
pub struct ApiAccess {
    /// `https://host:port`.
    pub server: String,
    /// The CA bundle (PEM) that signed the API server's certificate.
    pub ca_file: PathBuf,
    /// The bearer token (re-read by kube when it changes).
    pub token_file: PathBuf,
}

impl ApiAccess {
    /// The in-cluster access: `server` if given, else the address the
    /// kubelet puts into every pod's environment; `token` and `ca.crt` of
    /// `service_account_dir`.
    pub fn in_cluster(server: Option<&str>, service_account_dir: &Path) -> Result<Self> {
        let server = match server {
            Some(server) => server.to_string(),
            None => server_from_env(
                std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref(),
                std::env::var("KUBERNETES_SERVICE_PORT").ok().as_deref(),
            )?,
        };
        Ok(Self {
            server,
            ca_file: service_account_dir.join("ca.crt"),
            token_file: service_account_dir.join("token"),
        })
    }
}

/// client-go's rule: both variables set; an IPv6 host in brackets.
fn server_from_env(host: Option<&str>, port: Option<&str>) -> Result<String> {
    let (Some(host), Some(port)) = (host, port) else {
        return Err(InstallError::PodCidr(
            "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not both set: not in a pod? (give --api-server)".into(),
        ));
    };
    let port: u16 = port
        .parse()
        .map_err(|e| InstallError::PodCidr(format!("KUBERNETES_SERVICE_PORT {port:?}: {e}")))?;
    Ok(match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("https://[{v6}]:{port}"),
        _ => format!("https://{host}:{port}"),
    })
}

/// `GET /api/v1/nodes/<name>`, each of connect and response bounded by
/// `timeout`. A refusal names the status and what usually causes it.
pub fn get_node(access: &ApiAccess, name: &str, timeout: Duration) -> Result<Node> {
    let config = client_config(access, timeout)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| InstallError::PodCidr(format!("starting the API client's runtime: {e}")))?;
    runtime.block_on(async {
        let client = kube::Client::try_from(config).map_err(|e| {
            InstallError::PodCidr(format!("the API client for {}: {e}", access.server))
        })?;
        let nodes: kube::Api<Node> = kube::Api::all(client);
        // kube retries nothing on a GET it was told not to; bound it all.
        match tokio::time::timeout(timeout * 2, nodes.get(name)).await {
            Ok(Ok(node)) => Ok(node),
            Ok(Err(e)) => Err(refusal(access, name, e)),
            Err(_) => Err(InstallError::PodCidr(format!(
                "{}: no answer for node {name} within {:?}",
                access.server,
                timeout * 2
            ))),
        }
    })
}

fn client_config(access: &ApiAccess, timeout: Duration) -> Result<kube::Config> {
    let url = access.server.parse().map_err(|e| {
        InstallError::PodCidr(format!("the API server's address {:?}: {e}", access.server))
    })?;
    let pem = std::fs::read(&access.ca_file)
        .map_err(|e| InstallError::io("reading", &access.ca_file, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .map(|cert| cert.map(|c| c.to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            InstallError::PodCidr(format!(
                "{}: not a PEM CA bundle: {e}",
                access.ca_file.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(InstallError::PodCidr(format!(
            "{} holds no certificate",
            access.ca_file.display()
        )));
    }
    if !access.token_file.is_file() {
        return Err(InstallError::io(
            "reading",
            &access.token_file,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let mut config = kube::Config::new(url);
    config.root_cert = Some(certs);
    config.root_cert_file = Some(access.ca_file.clone());
    config.auth_info.token_file = Some(access.token_file.display().to_string());
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    config.default_retry = false;
    Ok(config)
}

fn refusal(access: &ApiAccess, name: &str, error: kube::Error) -> InstallError {
    let hint = match &error {
        kube::Error::Api(status) if status.code == 403 => {
            ": the ServiceAccount needs get on nodes (deploy/20-rbac.yaml)"
        }
        kube::Error::Api(status) if status.code == 404 => {
            ": --node-name must be the Node's name (the DaemonSet passes spec.nodeName)"
        }
        kube::Error::Api(status) if status.code == 401 => {
            ": the service account token was not accepted"
        }
        _ => "",
    };
    let what = match &error {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    };
    InstallError::PodCidr(format!("{}: get node {name}: {what}{hint}", access.server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_comes_from_the_pods_environment_as_client_go_builds_it() {
        assert_eq!(
            server_from_env(Some("10.96.0.1"), Some("443")).unwrap(),
            "https://10.96.0.1:443"
        );
        assert_eq!(
            server_from_env(Some("fd00:10:96::1"), Some("6443")).unwrap(),
            "https://[fd00:10:96::1]:6443"
        );
        let err = server_from_env(None, Some("443")).unwrap_err().to_string();
        assert!(err.contains("KUBERNETES_SERVICE_HOST"), "{err}");
        assert!(server_from_env(Some("10.96.0.1"), Some("https")).is_err());
    }

    #[test]
    fn a_missing_ca_bundle_or_token_is_named() {
        let dir = std::env::temp_dir().join(format!("cni-ebpf-kube-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let access = ApiAccess::in_cluster(Some("https://10.96.0.1:443"), &dir).unwrap();
        let err = get_node(&access, "n1", Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca.crt"), "{err}");
        std::fs::write(dir.join("ca.crt"), "not pem").unwrap();
        let err = get_node(&access, "n1", Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no certificate"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
