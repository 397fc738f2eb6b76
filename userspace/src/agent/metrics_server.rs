//! The metrics over HTTP/1 (hyper): `GET /metrics`, 404 for anything else.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::metrics;

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause after a failed accept (out of file descriptors, say), so a
/// failure that lasts does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `registry` to every connection on `listener` until the future is
/// dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("metrics: accepting a connection: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, registry.clone()));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                log::debug!("metrics: connection ended: {e}");
            }
        });
    }
}

async fn respond(
    request: Request<Incoming>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/metrics" {
        return Ok(text(StatusCode::NOT_FOUND, "try /metrics\n".into()));
    }
    // Reading the maps is a few syscalls per entry: off the reactor, which
    // also carries the programs' log records.
    let rendered = tokio::task::spawn_blocking(move || metrics::render(&registry)).await;
    Ok(match rendered {
        Ok(Ok(body)) => response(StatusCode::OK, metrics::CONTENT_TYPE, body),
        _ => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the datapath failed; the agent's log says why\n".into(),
        ),
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body)
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
