//! A small real HTTPS server that answers `GET /api/v1/nodes/<name>` as the
//! Kubernetes API server does, inside a namespace of the test's: a CA and a
//! server certificate made with `openssl` for its address, a bearer token
//! it accepts (403 `Forbidden` Status for any other), the Node objects it
//! knows (404 `NotFound` Status for the others). Plus a service-account
//! directory (`token`, `ca.crt`) as the kubelet mounts one into a pod.
//! It is Python's `http.server` with `ssl`; it logs every request line.
//! Killed, and its files removed, on drop.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    ext::wait_until,
    names,
    netns::Netns,
    process::{self, KillOnDrop},
};

/// The port the fake API server listens on (kube-apiserver's usual one).
pub const PORT: u16 = 6443;
/// The token the server accepts.
pub const TOKEN: &str = "cni-ebpf-test-token";

const SERVER: &str = r#"
import http.server, json, ssl, sys
addr, port, cert, key, token, nodes_file = sys.argv[1:7]
nodes = json.load(open(nodes_file))

def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}

class Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        name = self.path.split("?")[0].removeprefix("/api/v1/nodes/")
        if self.headers.get("Authorization") != "Bearer " + token:
            code, body = 403, status(403, "Forbidden", 'nodes "%s" is forbidden: User "system:anonymous" cannot get resource "nodes" in API group "" at the cluster scope' % name)
        elif not self.path.startswith("/api/v1/nodes/") or name not in nodes:
            code, body = 404, status(404, "NotFound", 'nodes "%s" not found' % name)
        else:
            code, body = 200, nodes[name]
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        sys.stderr.write("request %s %s\n" % (self.requestline, args[1] if len(args) > 1 else ""))
        sys.stderr.flush()

server = http.server.HTTPServer((addr, int(port)), Api)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
sys.stderr.write("serving\n")
sys.stderr.flush()
server.serve_forever()
"#;

pub struct FakeApiServer {
    // The process goes before its files.
    process: Option<KillOnDrop>,
    dir: PathBuf,
    ip: Ipv4Addr,
}

impl FakeApiServer {
    /// Serves `nodes` (name -> Node object) on `ip:6443` inside `ns`.
    pub fn start(ns: &Netns, ip: Ipv4Addr, nodes: &Value) -> Self {
        let dir = std::env::temp_dir().join(names::unique("cni-ebpf-kube-api"));
        fs::create_dir_all(dir.join("serviceaccount")).unwrap();
        let mut server = Self {
            process: None,
            dir,
            ip,
        };
        server.make_certificates();
        fs::write(server.dir.join("serviceaccount/token"), TOKEN).unwrap();
        fs::write(server.dir.join("nodes.json"), nodes.to_string()).unwrap();
        fs::write(server.dir.join("server.py"), SERVER).unwrap();
        let log = fs::File::create(server.dir.join("server.log")).unwrap();
        let mut command = ns.command("/usr/bin/python3");
        command
            .arg(server.dir.join("server.py"))
            .arg(ip.to_string())
            .arg(PORT.to_string())
            .arg(server.dir.join("server.crt"))
            .arg(server.dir.join("server.key"))
            .arg(TOKEN)
            .arg(server.dir.join("nodes.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        server.process = Some(KillOnDrop(
            command.spawn().expect("spawning the fake API server"),
        ));
        let up = wait_until(Duration::from_secs(15), || server.log().contains("serving"));
        assert!(up, "the fake API server did not start: {}", server.log());
        server
    }

    /// A CA, and a server certificate it signed for the server's IP (a CA
    /// certificate itself is refused as a server's by rustls/webpki).
    fn make_certificates(&self) {
        let d = |name: &str| self.dir.join(name).display().to_string();
        let openssl = |args: &[&str]| {
            let mut command = Command::new("openssl");
            command.args(args);
            let out = process::output_with_timeout(&mut command, None, Duration::from_secs(30))
                .expect("running openssl");
            process::expect_success(&format!("openssl {}", args.join(" ")), &out);
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=cni-ebpf-test-ca",
            "-keyout",
            &d("ca.key"),
            "-out",
            &d("serviceaccount/ca.crt"),
        ]);
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-keyout",
            &d("server.key"),
            "-out",
            &d("server.csr"),
        ]);
        fs::write(
            self.dir.join("server.ext"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:{}\n",
                self.ip
            ),
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &d("server.csr"),
            "-CA",
            &d("serviceaccount/ca.crt"),
            "-CAkey",
            &d("ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &d("server.ext"),
            "-out",
            &d("server.crt"),
        ]);
    }

    /// `https://<ip>:6443`.
    pub fn url(&self) -> String {
        format!("https://{}:{PORT}", self.ip)
    }

    /// The service-account dir (`token`, `ca.crt`) a pod would have.
    pub fn service_account_dir(&self) -> PathBuf {
        self.dir.join("serviceaccount")
    }

    /// Where the server's files live (to mount into a container).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's stderr: a `request <line> <status>` per request.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The request lines it answered with `status`.
    pub fn requests(&self, status: u16) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.strip_prefix("request "))
            .filter(|l| l.ends_with(&format!(" {status}")))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.process.take();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
