//! Credit tokens: how a scout spends its draft credit from outside libp2p.
//!
//! Over libp2p a peer is known by its connection. An HTTP client is not, so a
//! scout proves who it is with a token signed by its identity key and sends it
//! as its API key (`Authorization: Bearer shard-credit.1.…`). The token names the
//! key and an expiry, nothing else: it is a bearer credential, so it expires, and
//! whoever holds it spends the scout's credit until then.
//!
//! Format: `shard-credit.1.<public key, protobuf, hex>.<expiry, unix s>.<signature, hex>`,
//! the signature over [`DOMAIN`], the public key bytes and the expiry (8 bytes, LE).

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use thiserror::Error;

/// Every credit token starts with this.
pub const PREFIX: &str = "shard-credit.1.";
/// Signed bytes start with this, so no other signature can pass for a token.
pub const DOMAIN: &[u8] = b"shard credit token v1\0";
/// The longest life a token may claim.
pub const MAX_LIFETIME_S: u64 = 366 * 24 * 3600;
/// Longest token accepted (a little over an ed25519 one), before any parsing.
const MAX_TOKEN_LEN: usize = 512;

/// A verified credit token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditToken {
    /// The scout whose credit it spends.
    pub peer: PeerId,
    /// When it stops being accepted (unix seconds).
    pub expires_at_s: u64,
}

/// Why a credit token was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CreditTokenError {
    /// Not a credit token at all (callers treat such keys as anonymous).
    #[error("not a shard credit token")]
    NotAToken,
    /// It starts like one but does not parse.
    #[error("malformed credit token: {0}")]
    Malformed(&'static str),
    /// The signature does not verify under the named key.
    #[error("the credit token's signature does not verify")]
    BadSignature,
    /// Past its expiry.
    #[error("the credit token expired at {expires_at_s} (now {now_s}); make a new one")]
    Expired {
        /// Its expiry.
        expires_at_s: u64,
        /// Our clock.
        now_s: u64,
    },
    /// Claims a life longer than [`MAX_LIFETIME_S`].
    #[error("the credit token claims to live until {expires_at_s}, more than a year from now")]
    TooLong {
        /// Its expiry.
        expires_at_s: u64,
    },
}

fn signed_bytes(key: &[u8], expires_at_s: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(DOMAIN.len() + key.len() + 8);
    bytes.extend_from_slice(DOMAIN);
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&expires_at_s.to_le_bytes());
    bytes
}

impl CreditToken {
    /// Makes a token for `key`'s peer that expires at `expires_at_s`.
    pub fn issue(key: &Keypair, expires_at_s: u64) -> Result<String, crate::SignatureError> {
        let public = key.public().encode_protobuf();
        let signature = key
            .sign(&signed_bytes(&public, expires_at_s))
            .map_err(crate::SignatureError::Signing)?;
        Ok(format!(
            "{PREFIX}{}.{expires_at_s}.{}",
            hex::encode(&public),
            hex::encode(signature)
        ))
    }

    /// Checks `token` at time `now_s`.
    pub fn verify(token: &str, now_s: u64) -> Result<CreditToken, CreditTokenError> {
        let rest = token
            .strip_prefix(PREFIX)
            .ok_or(CreditTokenError::NotAToken)?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(CreditTokenError::Malformed("too long"));
        }
        let mut parts = rest.split('.');
        let (Some(key), Some(expiry), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CreditTokenError::Malformed("expected key.expiry.signature"));
        };
        let key = hex::decode(key).map_err(|_| CreditTokenError::Malformed("key is not hex"))?;
        let public = PublicKey::try_decode_protobuf(&key)
            .map_err(|_| CreditTokenError::Malformed("not a public key"))?;
        let expires_at_s: u64 = expiry
            .parse()
            .map_err(|_| CreditTokenError::Malformed("expiry is not a number"))?;
        let signature = hex::decode(signature)
            .map_err(|_| CreditTokenError::Malformed("signature is not hex"))?;
        if !public.verify(&signed_bytes(&key, expires_at_s), &signature) {
            return Err(CreditTokenError::BadSignature);
        }
        if expires_at_s <= now_s {
            return Err(CreditTokenError::Expired {
                expires_at_s,
                now_s,
            });
        }
        if expires_at_s - now_s > MAX_LIFETIME_S {
            return Err(CreditTokenError::TooLong { expires_at_s });
        }
        Ok(CreditToken {
            peer: public.to_peer_id(),
            expires_at_s,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_token_names_its_signer_until_it_expires() {
        let key = Keypair::generate_ed25519();
        let token = CreditToken::issue(&key, NOW + 60).unwrap();
        let checked = CreditToken::verify(&token, NOW).unwrap();
        assert_eq!(checked.peer, key.public().to_peer_id());
        assert_eq!(checked.expires_at_s, NOW + 60);
        assert_eq!(
            CreditToken::verify(&token, NOW + 60),
            Err(CreditTokenError::Expired {
                expires_at_s: NOW + 60,
                now_s: NOW + 60
            })
        );
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let token = CreditToken::issue(&key, NOW + 60).unwrap();
        assert_eq!(
            CreditToken::verify("sk-anything", NOW),
            Err(CreditTokenError::NotAToken)
        );
        // A later expiry under the same signature.
        let stretched = token.replace(&format!(".{}.", NOW + 60), &format!(".{}.", NOW + 61));
        assert_eq!(
            CreditToken::verify(&stretched, NOW),
            Err(CreditTokenError::BadSignature)
        );
        // Someone else's key with this signature.
        let other_key = hex::encode(other.public().encode_protobuf());
        let mine = hex::encode(key.public().encode_protobuf());
        assert_eq!(
            CreditToken::verify(&token.replace(&mine, &other_key), NOW),
            Err(CreditTokenError::BadSignature)
        );
        let too_long = CreditToken::issue(&key, NOW + MAX_LIFETIME_S + 1).unwrap();
        assert!(matches!(
            CreditToken::verify(&too_long, NOW),
            Err(CreditTokenError::TooLong { .. })
        ));
        for bad in [
            "shard-credit.1.",
            "shard-credit.1.zz.1.00",
            "shard-credit.1.00.1.00",
            "shard-credit.1.a.b.c.d",
        ] {
            assert!(
                matches!(
                    CreditToken::verify(bad, NOW),
                    Err(CreditTokenError::Malformed(_))
                ),
                "{bad}"
            );
        }
        let huge = format!("{PREFIX}{}", "0".repeat(10_000));
        assert_eq!(
            CreditToken::verify(&huge, NOW),
            Err(CreditTokenError::Malformed("too long"))
        );
    }
}
