//! The shopper page (`/`), the operator page (`/ops`) and their scripts and
//! styles, embedded in the binary at build time from `pages/`: plain HTML,
//! CSS and JavaScript, no build step. Each answer carries an ETag, so a
//! browser that already has a file revalidates it with a 304 and no body:
//! the crowd reloading the page at the opening second costs headers only.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::OnceLock;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use hyper::{Request, StatusCode};

use super::error::ApiError;
use super::json::{respond, HttpResponse};

/// A file served as it is, by its path.
struct Page {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// A page of `pages/` served at `path`.
macro_rules! page {
    ($path:literal, $content_type:expr, $file:literal) => {
        Page {
            path: $path,
            content_type: $content_type,
            body: include_str!(concat!("../../pages/", $file)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const SCRIPT: &str = "text/javascript; charset=utf-8";

const PAGES: &[Page] = &[
    page!("/", HTML, "shop.html"),
    page!("/ops", HTML, "ops.html"),
    page!("/demo/gateway", HTML, "gateway.html"),
    page!("/assets/common.js", SCRIPT, "common.js"),
    page!("/assets/shop.js", SCRIPT, "shop.js"),
    page!("/assets/ops.js", SCRIPT, "ops.js"),
    page!("/assets/gateway.js", SCRIPT, "gateway.js"),
    page!("/assets/style.css", "text/css; charset=utf-8", "style.css"),
];

/// The ETag of each page, in the order of [`PAGES`]: a hash of its bytes,
/// the same in every instance built from the same files.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        PAGES
            .iter()
            .map(|page| {
                let tag = format!("\"{:016x}\"", hasher.hash_one(page.body));
                HeaderValue::from_str(&tag).expect("a hex tag is a header value")
            })
            .collect()
    })
}

/// `GET /assets/{file}`.
pub fn serve_asset(file: &str, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let index = PAGES
        .iter()
        .position(|p| p.path.strip_prefix("/assets/") == Some(file))
        .ok_or_else(|| ApiError::NotFound(format!("no asset {file:?}")))?;
    Ok(answer(index, req))
}

/// The page at `path`.
pub fn serve(path: &str, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let index = PAGES
        .iter()
        .position(|p| p.path == path)
        .ok_or_else(|| ApiError::NotFound(format!("no page {path}")))?;
    Ok(answer(index, req))
}

/// `PAGES[index]`: 200 with its body, or 304 when the browser's copy is
/// current. Browsers revalidate every time (`no-cache`), so a new release
/// is seen at the next load.
fn answer(index: usize, req: &Request<Incoming>) -> HttpResponse {
    let page = &PAGES[index];
    let etag = &etags()[index];
    let current = req
        .headers()
        .get(IF_NONE_MATCH)
        .is_some_and(|given| given.as_bytes() == etag.as_bytes());
    let (status, body) = if current {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        (StatusCode::OK, Bytes::from_static(page.body.as_bytes()))
    };
    let mut response = respond(status, page.content_type, body);
    let headers = response.headers_mut();
    headers.insert(ETAG, etag.clone());
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_has_its_own_tag() {
        let tags = etags();
        assert_eq!(tags.len(), PAGES.len());
        for (i, a) in tags.iter().enumerate() {
            assert!(tags[i + 1..].iter().all(|b| a != b), "{:?}", PAGES[i].path);
        }
    }
}
