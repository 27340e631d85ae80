//! A CRI v1 client over a unix socket. Every call maps a failed status to
//! `PodError::Cri { op, message }` with the runtime's message kept verbatim.
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::PodError;

#[derive(Clone)]
pub struct CriClient {
    socket: PathBuf,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// `unix:///run/x.sock` or a plain path → the socket path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, PodError> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(PodError::InvalidField {
            field: "--cri".into(),
            value: endpoint.into(),
            accepted: "unix:///ABSOLUTE/PATH or an absolute socket path".into(),
        });
    }
    Ok(PathBuf::from(path))
}

macro_rules! call {
    ($self:ident . $svc:ident . $method:ident ( $req:expr ), $op:literal) => {
        $self.$svc.clone().$method($req).await.map(|r| r.into_inner()).map_err(|s| PodError::cri($op, s))
    };
}

impl CriClient {
    /// Connects to a CRI endpoint (`unix:///PATH` or `/PATH`) and checks it answers `Version`.
    pub async fn connect(endpoint: &str) -> Result<Self, PodError> {
        let socket = socket_path(endpoint)?;
        let connect_err = |message: String| PodError::Connect { endpoint: endpoint.into(), message };
        let path = socket.clone();
        // The URI is a placeholder: the connector ignores it and dials the socket.
        let channel = Endpoint::try_from("http://[::1]:0")
            .map_err(|e| connect_err(e.to_string()))?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }))
            .await
            .map_err(|e| {
                connect_err(format!(
                    "{e}: {}",
                    std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
                ))
            })?;
        let client = CriClient {
            socket,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        };
        client.version().await?;
        Ok(client)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn version(&self) -> Result<cri::VersionResponse, PodError> {
        call!(self.runtime.version(cri::VersionRequest { version: "v1".into() }), "Version")
    }

    /// The runtime's `NetworkReady` condition: `Ok(None)` when ready, else `(reason, message)`.
    pub async fn network_not_ready(&self) -> Result<Option<(String, String)>, PodError> {
        let status = call!(self.runtime.status(cri::StatusRequest { verbose: false }), "Status")?;
        Ok(status
            .status
            .into_iter()
            .flat_map(|s| s.conditions)
            .find(|c| c.r#type == "NetworkReady" && !c.status)
            .map(|c| (c.reason, c.message)))
    }

    pub async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig, handler: &str) -> Result<String, PodError> {
        let req = cri::RunPodSandboxRequest { config: Some(config), runtime_handler: handler.into() };
        Ok(call!(self.runtime.run_pod_sandbox(req), "RunPodSandbox")?.pod_sandbox_id)
    }

    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<(), PodError> {
        call!(self.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() }), "StopPodSandbox")
            .map(drop)
    }

    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<(), PodError> {
        call!(
            self.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() }),
            "RemovePodSandbox"
        )
        .map(drop)
    }

    pub async fn list_pod_sandboxes(&self, labels: &[(&str, &str)]) -> Result<Vec<cri::PodSandbox>, PodError> {
        let filter = cri::PodSandboxFilter {
            label_selector: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        Ok(call!(self.runtime.list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(filter) }), "ListPodSandbox")?
            .items)
    }

    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String, PodError> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        };
        Ok(call!(self.runtime.create_container(req), "CreateContainer")?.container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<(), PodError> {
        call!(self.runtime.start_container(cri::StartContainerRequest { container_id: id.into() }), "StartContainer")
            .map(drop)
    }

    pub async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<(), PodError> {
        let req = cri::StopContainerRequest { container_id: id.into(), timeout: timeout_secs };
        call!(self.runtime.stop_container(req), "StopContainer").map(drop)
    }

    pub async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, PodError> {
        let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: false };
        call!(self.runtime.container_status(req), "ContainerStatus")?.status.ok_or_else(|| PodError::Cri {
            op: "ContainerStatus",
            code: tonic::Code::NotFound,
            message: format!("no status for container {id}"),
        })
    }

    pub async fn list_containers(&self, sandbox_id: &str) -> Result<Vec<cri::Container>, PodError> {
        let filter = cri::ContainerFilter { pod_sandbox_id: sandbox_id.into(), ..Default::default() };
        Ok(call!(self.runtime.list_containers(cri::ListContainersRequest { filter: Some(filter) }), "ListContainers")?
            .containers)
    }

    pub async fn exec_sync(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout_secs: i64,
    ) -> Result<cri::ExecSyncResponse, PodError> {
        let req = cri::ExecSyncRequest { container_id: container_id.into(), cmd, timeout: timeout_secs };
        call!(self.runtime.exec_sync(req), "ExecSync")
    }

    /// The streaming server URL for an exec with streams (see [`crate::stream_exec`]).
    pub async fn exec_url(&self, req: cri::ExecRequest) -> Result<String, PodError> {
        Ok(call!(self.runtime.exec(req), "Exec")?.url)
    }

    /// Whether the runtime already has `image`.
    pub async fn image_present(&self, image: &str) -> Result<bool, PodError> {
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            verbose: false,
        };
        Ok(call!(self.images.image_status(req), "ImageStatus")?.image.is_some())
    }

    pub async fn pull_image(&self, image: &str) -> Result<String, PodError> {
        let req = cri::PullImageRequest {
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            ..Default::default()
        };
        Ok(call!(self.images.pull_image(req), "PullImage")?.image_ref)
    }
}
