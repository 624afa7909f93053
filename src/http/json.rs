//! Reading request bodies within the size limit, parsing JSON, and writing
//! JSON responses.

use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde::Serialize;

use super::error::ApiError;
use crate::config::ServerSettings;

pub type HttpResponse = Response<Full<Bytes>>;

const JSON: &str = "application/json";

/// A response with `body` as it is, of `content_type`.
pub fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> HttpResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> HttpResponse {
    let body = serde_json::to_vec(value).expect("response values serialize");
    respond(status, JSON, Bytes::from(body))
}

pub fn error(err: &ApiError) -> HttpResponse {
    let mut response = match err.fixed_body() {
        // Refusals that say the same every time are rendered once, at compile time.
        Some(body) => respond(err.status(), JSON, Bytes::from_static(body.as_bytes())),
        None => json(err.status(), &err.body()),
    };
    if err.closes_connection() {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(seconds) = err.retry_after() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Reads the whole body within `settings.body_read_timeout`, refusing with
/// 413 anything over `settings.max_body_bytes`; a declared length over the
/// limit is refused before reading a byte. A client that declares a body and
/// then sends it slowly or not at all gets 408 and loses the connection, so
/// idle sockets cannot pile up behind unsent bodies.
pub async fn read_body(
    req: Request<Incoming>,
    settings: &ServerSettings,
) -> Result<Bytes, ApiError> {
    let limit = settings.max_body_bytes;
    // hyper has parsed `Content-Length` already: a declared length is the
    // body's exact size hint (a chunked body's lower bound is 0).
    if req.body().size_hint().lower() > limit as u64 {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    // Frame by frame rather than with `collect()`, which builds a list of
    // chunks and copies them out: a shopper's body arrives in one frame,
    // returned here as it is.
    let mut body = req.into_body();
    let mut single = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    // The clock starts only when a frame is not already there: a body that
    // came with its headers (nearly every request) costs no timer.
    let mut deadline = None;
    loop {
        let ready =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        let next = match ready {
            Poll::Ready(next) => next,
            Poll::Pending => {
                let deadline = *deadline.get_or_insert_with(|| {
                    tokio::time::Instant::now() + settings.body_read_timeout
                });
                tokio::time::timeout_at(deadline, body.frame())
                    .await
                    .map_err(|_| ApiError::BodyTimeout)?
            }
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| {
            ApiError::InvalidRequest(format!("could not read the request body: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: nothing of ours
        };
        let read = single.len() + joined.as_ref().map_or(0, BytesMut::len);
        if read + data.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        match &mut joined {
            None if single.is_empty() => single = data,
            None => {
                let mut buf = BytesMut::from(std::mem::take(&mut single));
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
            Some(buf) => buf.extend_from_slice(&data),
        }
    }
    Ok(joined.map_or(single, BytesMut::freeze))
}

/// Every request body of the API is a JSON object. serde would also read a
/// struct from an array (`["sku", 1]`), which no client means to send.
pub fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::InvalidRequest(
            "invalid JSON body: expected an object".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        sku: String,
        #[serde(default)]
        quantity: i64,
    }

    #[test]
    fn a_body_must_be_an_object() {
        for bad in [&b"[\"sku\", 1]"[..], b"  [\"\"]", b"\"sku\"", b""] {
            assert!(
                matches!(parse::<Body>(bad), Err(ApiError::InvalidRequest(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse::<Body>(b" {\"sku\": \"a\"}").unwrap().sku, "a");
    }
}
