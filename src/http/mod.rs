//! The HTTP/1.1 server on hyper: accept loop, connection cap, header-read
//! timeout, graceful shutdown. Routing and handlers live in the submodules.

mod addresses;
mod admin;
mod admin_orders;
mod after_sale;
mod checkout;
mod client_ip;
mod coupons;
mod demo;
mod error;
mod json;
mod listing;
mod live;
mod ops;
mod pages;
mod payments;
mod promotions;
mod queue;
mod router;
mod self_wake;
mod shopper;
mod storefront;
pub mod views;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::app::App;
use self_wake::RepollOnSelfWake;

/// How long the accept loop pauses after an accept error (such as EMFILE
/// under a spike) before trying again, so it neither spins nor gives up.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Serves until `shutdown` resolves, then stops accepting and waits up to the
/// configured grace for in-flight requests to finish.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // header_read_timeout only fires when the builder has a timer.
    http.timer(TokioTimer::new())
        .header_read_timeout(app.settings.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = app.connections.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let peer = peer.ip();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(router::handle(&app, peer, req).await) }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(RepollOnSelfWake::new(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        }));
    }

    drop(listener);
    let grace = app.settings.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "some connections were still busy when the shutdown grace ran out"
        );
    }
}

/// Tells a client over the connection cap to come back later, then hangs up.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"error":"overloaded","message":"too many open connections"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let write = async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}
