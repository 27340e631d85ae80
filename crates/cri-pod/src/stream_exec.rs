//! CRI `Exec` with its streams, as `kubectl exec` reaches a container: the runtime answers the
//! `Exec` call with a URL on its streaming server, and the streams go over a WebSocket to it
//! (Kubernetes' channel protocol: every binary message starts with a channel byte — 0 stdin,
//! 1 stdout, 2 stderr, 3 the final status, 4 terminal resize).
//!
//! `v5.channel.k8s.io` is offered first because it is the only version in which a client can
//! close stdin without closing everything (message `[255, 0]`); containerd 1.x only speaks
//! `v4.channel.k8s.io`, where the end of input is only the end of the connection, so with v4
//! an input that reaches end of file just stops sending.
use futures_util::{SinkExt, StreamExt};
use k8s_cri::v1 as cri;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::client::CriClient;
use crate::error::PodError;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;
const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

/// What to run and how its terminal looks.
#[derive(Debug, Clone)]
pub struct ExecStreams {
    pub cmd: Vec<String>,
    /// Allocate a terminal (stderr then arrives on stdout, as with `kubectl exec -t`).
    pub tty: bool,
    /// Terminal size (columns, rows) sent once at the start, with `tty`.
    pub size: Option<(u16, u16)>,
}

/// How a streamed exec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecExit {
    pub exit_code: i32,
    /// The channel protocol the runtime chose.
    pub protocol: String,
}

/// Runs `streams.cmd` in `container_id`, copying `stdin` (if any) to the process and its output
/// to `stdout`/`stderr`, until the runtime reports the exit status.
pub async fn exec_streaming<R, O, E>(
    client: &CriClient,
    container_id: &str,
    streams: &ExecStreams,
    stdin: Option<R>,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<ExecExit, PodError>
where
    R: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let req = cri::ExecRequest {
        container_id: container_id.into(),
        cmd: streams.cmd.clone(),
        tty: streams.tty,
        stdin: stdin.is_some(),
        stdout: true,
        stderr: !streams.tty,
    };
    let url = client.exec_url(req).await?;
    let stream_err = |message: String| PodError::Stream { url: redact(&url), message };
    let ws_url = url.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
    let mut request = ws_url.into_client_request().map_err(|e| stream_err(e.to_string()))?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("v5.channel.k8s.io, v4.channel.k8s.io"));
    let (ws, response) = tokio_tungstenite::connect_async(request).await.map_err(|e| stream_err(e.to_string()))?;
    let protocol =
        response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if protocol != V5 && protocol != V4 {
        return Err(stream_err(format!("runtime chose channel protocol {protocol:?}; accepted: {V5} or {V4}")));
    }
    let (mut sink, mut source) = ws.split();
    if let (true, Some((width, height))) = (streams.tty, streams.size) {
        let mut msg = vec![RESIZE];
        msg.extend(format!("{{\"Width\":{width},\"Height\":{height}}}").into_bytes());
        sink.send(Message::binary(msg)).await.map_err(|e| stream_err(e.to_string()))?;
    }
    let mut stdin = stdin;
    let mut buf = vec![0u8; 32 * 1024];
    let mut status: Option<Vec<u8>> = None;
    loop {
        tokio::select! {
            read = async { stdin.as_mut().expect("guarded").read(&mut buf[1..]).await }, if stdin.is_some() => {
                match read {
                    Ok(0) | Err(_) => {
                        stdin = None;
                        if protocol == V5 {
                            sink.send(Message::binary(vec![CLOSE, STDIN])).await.map_err(|e| stream_err(e.to_string()))?;
                        }
                    }
                    Ok(n) => {
                        buf[0] = STDIN;
                        sink.send(Message::binary(buf[..=n].to_vec())).await.map_err(|e| stream_err(e.to_string()))?;
                    }
                }
            }
            msg = source.next() => {
                let Some(msg) = msg else { break };
                let data = match msg.map_err(|e| stream_err(e.to_string()))? {
                    Message::Binary(data) => data,
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Some((&channel, payload)) = data.split_first() else { continue };
                let written = match channel {
                    STDOUT => stdout.write_all(payload).await,
                    STDERR => stderr.write_all(payload).await,
                    STATUS => {
                        status.get_or_insert_with(Vec::new).extend_from_slice(payload);
                        Ok(())
                    }
                    _ => Ok(()),
                };
                written.map_err(|e| stream_err(format!("writing output: {e}")))?;
            }
        }
    }
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;
    let exit_code = match status {
        Some(bytes) => exit_code_of(&bytes).map_err(stream_err)?,
        None => return Err(stream_err("the connection ended without an exit status".into())),
    };
    Ok(ExecExit { exit_code, protocol })
}

/// The exit code in the final status message (a Kubernetes `Status` object): `Success` is 0,
/// a `NonZeroExitCode` failure carries the code as its `ExitCode` cause.
fn exit_code_of(status: &[u8]) -> Result<i32, String> {
    let value: serde_json::Value = serde_json::from_slice(status)
        .map_err(|e| format!("exit status is not JSON ({e}): {}", String::from_utf8_lossy(status)))?;
    match value["status"].as_str() {
        Some("Success") => return Ok(0),
        Some("Failure") if value["reason"] == "NonZeroExitCode" => {
            let causes = value["details"]["causes"].as_array().cloned().unwrap_or_default();
            if let Some(code) = causes
                .iter()
                .find(|c| c["reason"] == "ExitCode")
                .and_then(|c| c["message"].as_str())
                .and_then(|m| m.parse().ok())
            {
                return Ok(code);
            }
        }
        _ => {}
    }
    Err(format!("exec failed: {}", value["message"].as_str().unwrap_or("no message")))
}

/// The streaming URL without its one-time token (it grants the exec to whoever holds it).
fn redact(url: &str) -> String {
    match url.rfind('/') {
        Some(i) => format!("{}/…", &url[..i]),
        None => "…".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_from_status() {
        assert_eq!(exit_code_of(br#"{"metadata":{},"status":"Success"}"#), Ok(0));
        let failed = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_code_of(failed), Ok(3));
        let err = exit_code_of(br#"{"status":"Failure","message":"no such container"}"#).unwrap_err();
        assert_eq!(err, "exec failed: no such container");
        assert!(exit_code_of(b"garbage").unwrap_err().contains("garbage"));
    }

    #[test]
    fn token_is_not_shown() {
        assert_eq!(redact("http://127.0.0.1:41235/exec/AbCdEf12"), "http://127.0.0.1:41235/exec/…");
    }
}
