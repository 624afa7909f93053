//! Which address a request comes from, for the per-address bucket.

use std::net::IpAddr;

use hyper::HeaderMap;

/// The peer's address, unless the peer is a reverse proxy the operator
/// trusts: then the nearest address in `X-Forwarded-For` that is not itself
/// a trusted proxy. Entries left of that one are the client's own word and
/// are never believed, or a client could rotate them to dodge its bucket.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return ip,
            // Garbage where an address should be: stop at the proxy we know.
            Err(_) => return peer,
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_address() {
        let headers = forwarded("203.0.113.9");
        assert_eq!(
            client_ip(ip("198.51.100.1"), &headers, &[]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_spoofed_hops_are_ignored() {
        let proxy = ip("10.0.0.1");
        let headers = forwarded("1.2.3.4, 203.0.113.9, 10.0.0.2");
        let trusted = [proxy, ip("10.0.0.2")];
        assert_eq!(client_ip(proxy, &headers, &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        assert_eq!(client_ip(proxy, &forwarded("nonsense"), &trusted), proxy);
    }
}
