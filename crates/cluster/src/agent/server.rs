//! The metrics endpoint: `GET /metrics` (Prometheus text format 0.0.4) over HTTP/1.1 with
//! hyper; anything else is 404. The store is measured at each scrape, off the async threads.
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::metrics::StoreGauges;
use super::Shared;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, shared.clone()));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(req: Request<hyper::body::Incoming>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = |status, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = ctype.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        Ok(r)
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        return response(StatusCode::NOT_FOUND, "text/plain", "not found; the metrics are at /metrics\n".into());
    }
    let config = shared.config.clone();
    let gauges = tokio::task::spawn_blocking(move || store_gauges(&config)).await.unwrap_or_default();
    response(StatusCode::OK, CONTENT_TYPE, shared.metrics.render(&gauges))
}

fn store_gauges(config: &imageless_node::config::NodeConfig) -> StoreGauges {
    let root = &config.state_root;
    let usage = imageless_node::pressure::Usage::measure(&config.store_dir(), root).unwrap_or_default();
    let environments = std::fs::read_dir(root.join("envs"))
        .map(|d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count() as u64)
        .unwrap_or(0);
    let views = imageless_node::view::list(root).len() as u64;
    StoreGauges { usage, environments, views }
}
