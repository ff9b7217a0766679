//! Which of an oracle's addresses a browser can dial, best first.
//!
//! A tab speaks WebRTC-direct (UDP, no TLS certificate needed: the address
//! carries the certificate's hash) and WebSocket. An address on loopback
//! comes after one on a real interface: Chromium gathers no loopback ICE
//! candidates, so WebRTC to 127.0.0.1 often never connects.

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// How a browser reaches an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BrowserTransport {
    /// WebRTC-direct (`/udp/…/webrtc-direct/certhash/…`).
    Webrtc,
    /// WebSocket (`/tcp/…/ws`, or `wss`).
    Websocket,
}

impl BrowserTransport {
    /// The name the web app shows.
    pub fn label(self) -> &'static str {
        match self {
            BrowserTransport::Webrtc => "webrtc",
            BrowserTransport::Websocket => "websocket",
        }
    }

    /// The transport `addr` would be dialled with from a tab, if any.
    pub fn of(addr: &Multiaddr) -> Option<BrowserTransport> {
        let mut webrtc = false;
        let mut certhash = false;
        let mut ws = false;
        for p in addr.iter() {
            match p {
                Protocol::WebRTCDirect => webrtc = true,
                Protocol::Certhash(_) => certhash = true,
                Protocol::Ws(_) | Protocol::Wss(_) => ws = true,
                _ => {}
            }
        }
        if webrtc && certhash {
            Some(BrowserTransport::Webrtc)
        } else if ws {
            Some(BrowserTransport::Websocket)
        } else {
            None
        }
    }
}

fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        Some(Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h)) => h == "localhost",
        _ => false,
    }
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_unspecified(),
        Some(Protocol::Ip6(ip)) => ip.is_unspecified(),
        _ => false,
    }
}

/// The addresses of `listen` a browser can dial, best first: WebRTC before
/// WebSocket, a real interface before loopback. Addresses that do not parse,
/// lack the oracle's `/p2p/` id or are unspecified (`0.0.0.0`) are left out.
pub fn browser_dial_order<'a>(listen: impl IntoIterator<Item = &'a str>) -> Vec<Multiaddr> {
    let mut usable: Vec<(BrowserTransport, bool, Multiaddr)> = listen
        .into_iter()
        .filter_map(|s| s.parse::<Multiaddr>().ok())
        .filter(|a| matches!(a.iter().last(), Some(Protocol::P2p(_))) && !is_unspecified(a))
        .filter_map(|a| Some((BrowserTransport::of(&a)?, is_loopback(&a), a)))
        .collect();
    // Stable: among equals, the oracle's order stays.
    usable.sort_by_key(|(transport, loopback, _)| (*transport, *loopback));
    usable.dedup_by(|a, b| a.2 == b.2);
    usable.into_iter().map(|(_, _, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    const HASH: &str = "uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g";

    #[test]
    fn webrtc_on_a_real_interface_comes_first_and_unusable_addresses_go() {
        let addrs = [
            format!("/ip4/127.0.0.1/tcp/9000/p2p/{PEER}"),
            format!("/ip4/127.0.0.1/tcp/9001/ws/p2p/{PEER}"),
            format!("/ip4/127.0.0.1/udp/9001/webrtc-direct/certhash/{HASH}/p2p/{PEER}"),
            format!("/ip4/192.0.2.2/udp/9001/webrtc-direct/certhash/{HASH}/p2p/{PEER}"),
            format!("/ip4/192.0.2.2/tcp/9001/ws/p2p/{PEER}"),
            format!("/ip4/192.0.2.2/udp/9000/quic-v1/p2p/{PEER}"),
            format!("/ip4/0.0.0.0/tcp/9001/ws/p2p/{PEER}"),
            format!("/ip4/10.0.0.1/udp/9001/webrtc-direct/p2p/{PEER}"),
            "/ip4/10.0.0.1/tcp/9001/ws".to_owned(),
            "not an address".to_owned(),
        ];
        let order = browser_dial_order(addrs.iter().map(String::as_str));
        let order: Vec<String> = order.iter().map(ToString::to_string).collect();
        assert_eq!(
            order,
            [
                addrs[3].clone(),
                addrs[2].clone(),
                addrs[4].clone(),
                addrs[1].clone()
            ]
        );
    }

    #[test]
    fn transports_are_named() {
        let ws: Multiaddr = "/dns4/example.org/tcp/443/wss".parse().expect("parses");
        assert_eq!(BrowserTransport::of(&ws), Some(BrowserTransport::Websocket));
        let tcp: Multiaddr = "/ip4/1.2.3.4/tcp/1".parse().expect("parses");
        assert_eq!(BrowserTransport::of(&tcp), None);
    }
}
