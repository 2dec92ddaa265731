//! Who a request comes from: the peer's address, or behind the configured reverse proxies the
//! address they forwarded; and the ranges that rate limits and budgets count by. Kept in memory
//! only, never stored or logged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::error::ApiError;
use crate::state::AppState;

/// The client's address, as a handler's argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// What one subscriber holds: the address itself for IPv4, its /64 for IPv6 (a home or a
    /// phone is handed a whole /64). Rate limits count by it.
    #[must_use]
    pub fn subscriber(self) -> IpAddr {
        match self.0 {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => IpAddr::V6(masked_v6(v6, 64)),
        }
    }

    /// The range one network holds: its IPv4 /24 or IPv6 /64. Pending ceremonies are shared
    /// out by it, so that rotating addresses inside a range gains nothing.
    #[must_use]
    pub fn range(self) -> IpAddr {
        match self.0 {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(v4.to_bits() & 0xffff_ff00)),
            IpAddr::V6(v6) => IpAddr::V6(masked_v6(v6, 64)),
        }
    }
}

fn masked_v6(address: Ipv6Addr, prefix: u32) -> Ipv6Addr {
    Ipv6Addr::from(address.to_bits() & (u128::MAX << (128 - prefix)))
}

/// The client of a request that reached the server from `peer`: `peer` itself, unless it is one
/// of the `trusted` proxies; then the rightmost `X-Forwarded-For` hop that is not a trusted
/// proxy (what a client writes there itself sits further left and is never believed).
#[must_use]
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |address: &IpAddr| trusted.iter().any(|net| net.contains(address));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        let Ok(address) = hop.parse::<IpAddr>().map(|a| a.to_canonical()) else {
            // A trusted proxy wrote something unreadable: count the request against that proxy.
            return client;
        };
        client = address;
        if !is_trusted(&address) {
            break;
        }
    }
    client
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ConnectInfo(peer) = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .copied()
            .ok_or_else(|| ApiError::Internal("no peer address on the request".into()))?;
        Ok(ClientAddr(client_ip(
            peer.ip(),
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().expect("header value"));
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxies: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().expect("net"),
            "10.0.0.0/8".parse().expect("net"),
        ];
        let spoofed = forwarded(&["203.0.113.9"]);
        assert_eq!(
            client_ip(ip("198.51.100.7"), &spoofed, &proxies),
            ip("198.51.100.7"),
            "an untrusted peer is the client"
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &spoofed, &proxies),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &spoofed, &[]),
            ip("127.0.0.1"),
            "no proxy is trusted by default"
        );
        // A client's own X-Forwarded-For sits left of what the proxies appended.
        let chain = forwarded(&["6.6.6.6, 198.51.100.7", "10.1.2.3"]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &chain, &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &forwarded(&["garbage"]), &proxies),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &HeaderMap::new(), &proxies),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &spoofed, &proxies),
            ip("203.0.113.9"),
            "IPv4-mapped peers are IPv4"
        );
    }

    #[test]
    fn ranges_are_a_v4_slash_24_and_a_v6_slash_64() {
        assert_eq!(ClientAddr(ip("198.51.100.7")).range(), ip("198.51.100.0"));
        assert_eq!(
            ClientAddr(ip("198.51.100.7")).subscriber(),
            ip("198.51.100.7")
        );
        let v6 = ClientAddr(ip("2001:db8:1:2:3:4:5:6"));
        assert_eq!(v6.range(), ip("2001:db8:1:2::"));
        assert_eq!(v6.subscriber(), ip("2001:db8:1:2::"));
    }
}
