//! Protocol ids, gossipsub topic names, and the version rules of seed 004.
//!
//! Ids have the form `/shard/MAJOR.MINOR.PATCH/<name>`. A major bump is a breaking
//! change to a wire format; minor adds things old peers may ignore; patch fixes.
//! Two peers can talk when their major versions are equal.

use std::fmt;
use std::str::FromStr;

use libp2p::StreamProtocol;
use thiserror::Error;

/// The version of the protocol this crate implements.
pub const PROTOCOL_VERSION: &str = "1.0.0";

macro_rules! shard_protocol {
    ($name:literal) => {
        StreamProtocol::new(concat!("/shard/1.0.0/", $name))
    };
}

/// Capability exchange on a new connection ([`crate::pb::HandshakeMessage`] both ways).
pub const HANDSHAKE_PROTOCOL: StreamProtocol = shard_protocol!("handshake");
/// One speculative round: [`crate::pb::DraftRequest`] → [`crate::pb::WorkResult`].
pub const VERIFY_PROTOCOL: StreamProtocol = shard_protocol!("verify");
/// A scout takes announced work: [`crate::pb::ClaimRequest`] → [`crate::pb::ClaimResponse`].
pub const CLAIM_PROTOCOL: StreamProtocol = shard_protocol!("claim");
/// Health: [`crate::pb::MetricsRequest`] → [`crate::pb::MetricsReport`].
pub const METRICS_PROTOCOL: StreamProtocol = shard_protocol!("metrics");
/// Discovery: [`crate::pb::ProtocolListRequest`] → [`crate::pb::ProtocolList`].
pub const PROTOCOL_LIST_PROTOCOL: StreamProtocol = shard_protocol!("protocol-list");

/// A leech asks for an answer: [`crate::pb::CompletionRequest`] → [`crate::pb::CompletionResponse`].
pub const COMPLETE_PROTOCOL: StreamProtocol = shard_protocol!("complete");

/// Model files between peers: [`crate::pb::WeightsRequest`] → [`crate::pb::WeightsResponse`]
/// (not yet served: see issue 10).
pub const WEIGHTS_PROTOCOL: StreamProtocol = shard_protocol!("weights");

/// Every request-response protocol of this version that nodes serve.
pub const ALL_PROTOCOLS: [StreamProtocol; 6] = [
    HANDSHAKE_PROTOCOL,
    VERIFY_PROTOCOL,
    CLAIM_PROTOCOL,
    COMPLETE_PROTOCOL,
    METRICS_PROTOCOL,
    PROTOCOL_LIST_PROTOCOL,
];

/// Gossipsub topic where oracles announce work ([`crate::pb::GossipWorkMessage`]).
pub const WORK_TOPIC: &str = "shard-work";
/// Gossipsub topic for verified results, oracles only ([`crate::pb::ResultBroadcast`]).
pub const WORK_RESULT_TOPIC: &str = "shard-work-result";
/// Gossipsub topic for topology updates ([`crate::pb::TopologyMessage`]).
pub const TOPOLOGY_TOPIC: &str = "shard-topology";

/// A `MAJOR.MINOR.PATCH` protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    /// Breaking changes.
    pub major: u32,
    /// Backward-compatible additions.
    pub minor: u32,
    /// Fixes.
    pub patch: u32,
}

/// A version or protocol id that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolIdError {
    /// Not three dot-separated decimal numbers.
    #[error("`{0}` is not a MAJOR.MINOR.PATCH version")]
    BadVersion(String),
    /// Not of the form `/shard/<version>/<name>`.
    #[error("`{0}` is not a /shard/<version>/<name> protocol id")]
    BadId(String),
}

impl ProtocolVersion {
    /// The version this crate implements.
    pub const CURRENT: ProtocolVersion = ProtocolVersion {
        major: 1,
        minor: 0,
        patch: 0,
    };

    /// Whether a peer speaking `other` can talk to us.
    pub fn is_compatible_with(&self, other: &ProtocolVersion) -> bool {
        self.major == other.major
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for ProtocolVersion {
    type Err = ProtocolIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProtocolIdError::BadVersion(s.chars().take(32).collect());
        let mut parts = s.split('.');
        let mut next = || -> Result<u32, ProtocolIdError> {
            let part = parts.next().ok_or_else(bad)?;
            // Leading '+' and empty parts are accepted by u32::from_str; not by us.
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || part.len() > 9 {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        let version = ProtocolVersion {
            major: next()?,
            minor: next()?,
            patch: next()?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(version)
    }
}

/// Splits `/shard/<version>/<name>` into its version and name.
pub fn parse_protocol_id(id: &str) -> Result<(ProtocolVersion, &str), ProtocolIdError> {
    let bad = || ProtocolIdError::BadId(id.chars().take(64).collect());
    let rest = id.strip_prefix("/shard/").ok_or_else(bad)?;
    let (version, name) = rest.split_once('/').ok_or_else(bad)?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        return Err(bad());
    }
    Ok((version.parse().map_err(|_| bad())?, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_ids_carry_the_crate_version() {
        let mut names = Vec::new();
        for p in ALL_PROTOCOLS {
            let (version, name) = parse_protocol_id(p.as_ref()).unwrap();
            assert_eq!(version, ProtocolVersion::CURRENT);
            assert_eq!(version.to_string(), PROTOCOL_VERSION);
            names.push(name.to_owned());
        }
        // Every protocol once, under the name peers know it by.
        assert_eq!(
            names,
            [
                "handshake",
                "verify",
                "claim",
                "complete",
                "metrics",
                "protocol-list"
            ]
        );
        assert_eq!(VERIFY_PROTOCOL.as_ref(), "/shard/1.0.0/verify");
    }

    #[test]
    fn compatibility_is_by_major_version() {
        let v = |s: &str| s.parse::<ProtocolVersion>().unwrap();
        assert!(v("1.0.0").is_compatible_with(&v("1.7.3")));
        assert!(!v("1.0.0").is_compatible_with(&v("2.0.0")));
    }

    #[test]
    fn malformed_versions_and_ids_are_rejected() {
        for bad in [
            "",
            "1",
            "1.0",
            "1.0.0.0",
            "1.+1.0",
            "a.b.c",
            "1..0",
            "99999999999.0.0",
        ] {
            assert!(bad.parse::<ProtocolVersion>().is_err(), "{bad:?}");
        }
        for bad in [
            "/shard/1.0.0/",
            "/other/1.0.0/x",
            "/shard/1.0/x",
            "/shard/1.0.0/X!",
        ] {
            assert!(parse_protocol_id(bad).is_err(), "{bad:?}");
        }
    }
}
