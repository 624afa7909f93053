//! Reading request bodies within the size limit, parsing JSON, and writing
//! JSON responses.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde::Serialize;

use super::error::ApiError;

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
    if let Some(seconds) = err.retry_after() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Reads the whole body, refusing with 413 anything over `limit` bytes;
/// a declared length over the limit is refused before reading a byte.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
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
    while let Some(frame) = body.frame().await {
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

pub fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
}
