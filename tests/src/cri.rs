//! A small CRI client: the calls kubelet makes to bring a pod's network up
//! and down (`RunPodSandbox`, `PodSandboxStatus`, `StopPodSandbox`,
//! `RemovePodSandbox`, and `Version` to wait for the runtime), over gRPC on
//! the runtime's unix socket.
//!
//! The messages are the subset of the CRI's `runtime.v1` API (kubernetes
//! `cri-api`, `pkg/apis/runtime/v1/api.proto`) these calls need, with that
//! file's field numbers; fields left out are unknown fields to the runtime
//! and default to empty, as protobuf has it.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tonic::{
    Request,
    codec::ProstCodec,
    transport::{Channel, Endpoint},
};

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionRequest {
    #[prost(string, tag = "1")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionResponse {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    #[prost(string, tag = "4")]
    pub runtime_api_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub uid: String,
    #[prost(string, tag = "3")]
    pub namespace: String,
    #[prost(uint32, tag = "4")]
    pub attempt: u32,
}

/// `Protocol`: TCP = 0, UDP = 1, SCTP = 2.
pub const PROTOCOL_TCP: i32 = 0;
pub const PROTOCOL_UDP: i32 = 1;

#[derive(Clone, PartialEq, prost::Message)]
pub struct PortMapping {
    #[prost(int32, tag = "1")]
    pub protocol: i32,
    #[prost(int32, tag = "2")]
    pub container_port: i32,
    #[prost(int32, tag = "3")]
    pub host_port: i32,
    #[prost(string, tag = "4")]
    pub host_ip: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandboxConfig {
    #[prost(string, tag = "1")]
    pub cgroup_parent: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(string, tag = "2")]
    pub hostname: String,
    #[prost(string, tag = "3")]
    pub log_directory: String,
    #[prost(message, repeated, tag = "5")]
    pub port_mappings: Vec<PortMapping>,
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "7")]
    pub annotations: HashMap<String, String>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub config: Option<PodSandboxConfig>,
    #[prost(string, tag = "2")]
    pub runtime_handler: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxResponse {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatusRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    #[prost(bool, tag = "2")]
    pub verbose: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxNetworkStatus {
    #[prost(string, tag = "1")]
    pub ip: String,
}

/// `PodSandboxState`: SANDBOX_READY = 0, SANDBOX_NOTREADY = 1.
pub const SANDBOX_READY: i32 = 0;

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatus {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int32, tag = "3")]
    pub state: i32,
    #[prost(message, optional, tag = "5")]
    pub network: Option<PodSandboxNetworkStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatusResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<PodSandboxStatus>,
    /// With `verbose`: the runtime's own details (containerd: JSON under
    /// `info`, with the sandbox's pid and network namespace path).
    #[prost(map = "string, string", tag = "2")]
    pub info: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StopPodSandboxRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StopPodSandboxResponse {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RemovePodSandboxRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RemovePodSandboxResponse {}

/// A failed call: the gRPC status code and message.
#[derive(Debug, Clone)]
pub struct CriError {
    pub code: tonic::Code,
    pub message: String,
}

impl std::fmt::Display for CriError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl From<tonic::Status> for CriError {
    fn from(status: tonic::Status) -> Self {
        Self {
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// Bounds every call: a runtime that hangs fails the test instead.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to a runtime's `RuntimeService`.
pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

impl CriClient {
    /// Connects to the unix socket `socket` (lazily: the first call
    /// connects).
    pub fn new(socket: PathBuf) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let channel = runtime.block_on(async {
            // The URI is required and unused: the connector dials the socket.
            Endpoint::from_static("http://cri.invalid")
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector_lazy(tower::service_fn(move |_| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                }))
        });
        Ok(Self { runtime, channel })
    }

    fn call<Req, Resp>(&self, method: &'static str, request: Req) -> Result<Resp, CriError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        self.runtime.block_on(async {
            let call = async {
                if let Err(e) = grpc.ready().await {
                    return Err(CriError {
                        code: tonic::Code::Unavailable,
                        message: e.to_string(),
                    });
                }
                let path = PathAndQuery::from_static(method);
                match grpc
                    .unary(Request::new(request), path, ProstCodec::default())
                    .await
                {
                    Ok(response) => Ok(response.into_inner()),
                    Err(status) => Err(CriError::from(status)),
                }
            };
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(result) => result,
                Err(_) => Err(CriError {
                    code: tonic::Code::DeadlineExceeded,
                    message: method.to_string(),
                }),
            }
        })
    }

    pub fn version(&self) -> Result<VersionResponse, CriError> {
        self.call(
            "/runtime.v1.RuntimeService/Version",
            VersionRequest {
                version: "v1".into(),
            },
        )
    }

    /// Returns the sandbox id.
    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String, CriError> {
        self.call::<_, RunPodSandboxResponse>(
            "/runtime.v1.RuntimeService/RunPodSandbox",
            RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            },
        )
        .map(|r| r.pod_sandbox_id)
    }

    pub fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatusResponse, CriError> {
        self.call(
            "/runtime.v1.RuntimeService/PodSandboxStatus",
            PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            },
        )
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        self.call::<_, StopPodSandboxResponse>(
            "/runtime.v1.RuntimeService/StopPodSandbox",
            StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            },
        )
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        self.call::<_, RemovePodSandboxResponse>(
            "/runtime.v1.RuntimeService/RemovePodSandbox",
            RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            },
        )
        .map(drop)
    }
}
